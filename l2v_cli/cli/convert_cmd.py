"""`l2v convert MODEL --recipe R -o OUT [key=value ...]`: the whole chain, resumable."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer

from l2v_cli.cli.options import launcher_options


@launcher_options()
def convert_cmd(
    model: str = typer.Argument(..., help="MODEL: alias (`l2v models`), folder, .gguf file, hub id or tiny-<arch>."),
    overrides: Optional[List[str]] = typer.Argument(None, metavar="[KEY=VALUE]...", help="Recipe overrides, e.g. mntp.train.max_steps=50."),
    recipe: str = typer.Option(..., "--recipe", "-r", help="Recipe name (`l2v recipes list`) or YAML path."),
    out: Optional[Path] = typer.Option(None, "-o", "--output", help="Run folder: one subfolder per stage, final/ = the export "
                                       "(not needed with --print-config)."),
    force: bool = typer.Option(False, "--force", help="Redo stages whose settings changed (and all after them)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the stage plan and launch commands, run nothing."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved recipe (each "
                                      "family-dependent value commented with where it came from) and exit."),
    launch: dict = None,
) -> None:
    """Run the recipe's stages in order: enable-bidir, training stages, export (and eval)."""
    from l2v_cli.config import load_recipe_with_origin, resolve_for_model
    from l2v_cli.errors import L2VError
    from l2v_cli.stages.convert import convert

    r, origin = load_recipe_with_origin(recipe, overrides or [])
    if print_config:  # the recipe as the run would use it: family values filled in, sources commented
        typer.echo(resolve_for_model(r, model, origin).annotated_yaml(), nl=False)
        return
    if out is None:
        if not dry_run:
            raise L2VError("no run folder given", where="-o", fix="add -o RUN_FOLDER (e.g. -o runs/x)")
        out = Path("runs") / f"{Path(model).name}-{r.name}"  # what a dry run shows when -o is left out
    t0 = time.time()
    final = convert(model, r, out, force=force, launch=launch, dry_run=dry_run, origin=origin,
                    echo=lambda m: typer.echo(m, err=True))
    if not dry_run:
        typer.echo(f"converted in {time.time() - t0:.0f}s: {final}", err=True)


def register(app) -> None:
    app.command("convert")(convert_cmd)
