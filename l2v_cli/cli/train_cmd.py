"""`l2v train-mntp | train-simcse | train-supervised INPUT -o OUT [key.sub=value ...]`."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import List, Optional

import typer

DEFAULT_RECIPE = {"train-mntp": "unsup", "train-simcse": "unsup", "train-supervised": "supervised"}
HELP = {
    "train-mntp": "Masked next-token prediction with LoRA on a bidirectional model (LLM2Vec step 2).",
    "train-simcse": "Unsupervised SimCSE: merge the previous adapter, train a fresh LoRA (step 3).",
    "train-supervised": "Supervised contrastive training on (query, positive, hard negative) rows (step 4).",
}


def run_stage_command(stage: str, input_model: str, out: Path, recipe_name: str, overrides: list[str],
                      *, resume: bool = True, force: bool = False, gpus: int | None = None,
                      nodes: int | None = None, hostfile: str | None = None, launcher: str | None = None,
                      deepspeed: str | None = None, master_port: int | None = None, recipe=None) -> Path:
    """Run one training stage, in this process or under a launcher (the CLI never joins the group)."""
    from l2v_cli import launch as L
    from l2v_cli.config import dump_recipe_yaml, load_recipe
    from l2v_cli.stages.worker import run_stage

    r = recipe or load_recipe(recipe_name, overrides)
    lc = r.launcher
    spec = L.Launch(launcher=launcher or lc.launcher, gpus=gpus or lc.gpus, nodes=nodes or lc.nodes,
                    hostfile=hostfile or lc.hostfile, master_port=master_port or lc.master_port,
                    deepspeed=L.deepspeed_config(deepspeed or lc.deepspeed))
    if spec.deepspeed and spec.launcher == "none":
        spec.launcher = "deepspeed"
    spec = L.from_slurm(spec)
    L.check_launch(spec)
    if not spec.distributed():
        return run_stage(stage, r, input_model, out, resume=resume, force=force, deepspeed=spec.deepspeed)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, recipe_file = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".recipe.yaml", dir=out.parent)
    with os.fdopen(fd, "w") as f:
        f.write(dump_recipe_yaml(r))
    args = [stage, str(input_model), str(out), recipe_file, "--resume" if resume else "--no-resume"]
    if force:
        args.append("--force")
    if spec.deepspeed:
        args += ["--deepspeed", spec.deepspeed]
    try:
        L.run(L.build_argv(spec, args), out.parent / f"{out.name}.log")
    finally:
        os.unlink(recipe_file)
    return out


def _make(stage: str):
    def command(
        input_model: str = typer.Argument(..., metavar="INPUT", help="A MODEL (folder, alias, .gguf, hub id) or the previous stage's folder."),
        overrides: Optional[List[str]] = typer.Argument(None, metavar="[KEY=VALUE]...", help="Recipe overrides, e.g. mntp.train.max_steps=50."),
        out: Path = typer.Option(..., "-o", "--output", help="The stage folder to write."),
        recipe: str = typer.Option(DEFAULT_RECIPE[stage], "--recipe", "-r", help="Recipe name or YAML path."),
        resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from the last checkpoint in OUT."),
        force: bool = typer.Option(False, "--force", help="Start over, deleting OUT."),
        print_config: bool = typer.Option(False, "--print-config", help="Print the resolved recipe and exit."),
        gpus: Optional[int] = typer.Option(None, "--gpus", help="Processes per node (CPU processes over gloo without CUDA)."),
        nodes: Optional[int] = typer.Option(None, "--nodes", help="Number of nodes."),
        hostfile: Optional[str] = typer.Option(None, "--hostfile", help="DeepSpeed hostfile for multi-node runs."),
        launcher: Optional[str] = typer.Option(None, "--launcher", help="none | torchrun | deepspeed."),
        deepspeed: Optional[str] = typer.Option(None, "--deepspeed", help="zero2 | zero3 | PATH to a DeepSpeed JSON."),
        master_port: Optional[int] = typer.Option(None, "--master-port", help="Rendezvous port."),
    ) -> None:
        from l2v_cli.config import dump_recipe_yaml, load_recipe

        r = load_recipe(recipe, overrides or [])
        if print_config:
            typer.echo(dump_recipe_yaml(r), nl=False)
            return
        done = run_stage_command(stage, input_model, out, recipe, [], resume=resume, force=force, gpus=gpus,
                                 nodes=nodes, hostfile=hostfile, launcher=launcher, deepspeed=deepspeed,
                                 master_port=master_port, recipe=r)
        typer.echo(f"{stage} complete: {done}", err=True)

    command.__doc__ = HELP[stage]
    return command


def register(app) -> None:
    for stage in DEFAULT_RECIPE:
        app.command(stage, help=HELP[stage])(_make(stage))
