"""`l2v train-mntp | train-simcse | train-supervised INPUT -o OUT [key.sub=value ...]`: one command
per training stage of the registry."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from l2v_cli.cli.options import launcher_options
from l2v_cli.stages import registry


def _make(stage: registry.Stage):
    @launcher_options()
    def command(
        input_model: str = typer.Argument(..., metavar="INPUT", help="A MODEL (folder, alias, .gguf, hub id) or the previous stage's folder."),
        overrides: Optional[List[str]] = typer.Argument(None, metavar="[KEY=VALUE]...", help="Recipe overrides, e.g. mntp.train.max_steps=50."),
        out: Path = typer.Option(..., "-o", "--output", help="The stage folder to write."),
        recipe: str = typer.Option(stage.default_recipe, "--recipe", "-r", help="Recipe name or YAML path."),
        resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from the last checkpoint in OUT."),
        force: bool = typer.Option(False, "--force", help="Start over, deleting OUT."),
        print_config: bool = typer.Option(False, "--print-config", help="Print the resolved recipe (with where each "
                                          "family-dependent value came from) and exit."),
        launch: dict = None,
    ) -> None:
        from l2v_cli.config import load_recipe_with_origin, resolve_for_model
        from l2v_cli.stages.worker import run_stage_command

        r, origin = load_recipe_with_origin(recipe, overrides or [])
        resolved = resolve_for_model(r, input_model, origin)
        if print_config:
            typer.echo(resolved.annotated_yaml(), nl=False)
            return
        for n in resolved.notes:
            typer.echo(f"l2v: note: {n}", err=True)
        done = run_stage_command(stage.name, input_model, out, resolved.recipe, resume=resume, force=force,
                                 provenance=resolved.provenance(), **launch)
        typer.echo(f"{stage.name} complete: {done}", err=True)

    command.__doc__ = stage.help
    return command


def register(app) -> None:
    for stage in registry.TRAINING:
        app.command(stage.name, help=stage.help)(_make(stage))
