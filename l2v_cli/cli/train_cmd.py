"""`l2v train-mntp | train-simcse | train-supervised INPUT -o OUT [key.sub=value ...]`."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import List, Optional

import typer

from l2v_cli.errors import L2VError

LAUNCHERS = ("none", "torchrun", "deepspeed")
DEFAULT_RECIPE = {"train-mntp": "unsup", "train-simcse": "unsup", "train-supervised": "supervised"}
HELP = {
    "train-mntp": "Masked next-token prediction with LoRA on a bidirectional model (LLM2Vec step 2).",
    "train-simcse": "Unsupervised SimCSE: merge the previous adapter, train a fresh LoRA (step 3).",
    "train-supervised": "Supervised contrastive training on (query, positive, hard negative) rows (step 4).",
}


def _given(value, default):
    """A command-line option if given (0 included: --gpus 0 is an error, not "unset"), else the recipe's."""
    return default if value is None else value


def launch_spec(r, *, gpus=None, nodes=None, hostfile=None, launcher=None, deepspeed=None, master_port=None):
    """The launch settings: command-line options over the recipe's `launcher` section, then SLURM."""
    from l2v_cli import launch as L

    lc = r.launcher
    spec = L.Launch(launcher=launcher or lc.launcher, gpus=_given(gpus, lc.gpus), nodes=_given(nodes, lc.nodes),
                    hostfile=hostfile or lc.hostfile, master_port=_given(master_port, lc.master_port),
                    deepspeed=L.deepspeed_config(deepspeed or lc.deepspeed))
    if spec.launcher not in LAUNCHERS:
        from l2v_cli.errors import did_you_mean

        raise L2VError(f"unknown launcher {spec.launcher!r}", where="--launcher" if launcher else "launcher.launcher",
                       fix=did_you_mean(spec.launcher, LAUNCHERS))
    if spec.deepspeed and spec.launcher == "none":
        spec.launcher = "deepspeed"
    return L.from_slurm(spec)


def _worker_args(stage, input_model, out, recipe_file, resume, force, spec) -> list[str]:
    args = [stage, str(input_model), str(out), str(recipe_file), "--resume" if resume else "--no-resume"]
    if force:
        args.append("--force")
    if spec.deepspeed:
        args += ["--deepspeed", spec.deepspeed]
    return args


def worker_argv(stage, input_model, out, recipe, launch_opts: dict) -> str:
    """The launch command a stage will run (for --dry-run); the recipe file is written at launch."""
    import shlex

    from l2v_cli import launch as L

    spec = launch_spec(recipe, **launch_opts)
    if not spec.distributed():
        return f"(in this process) {stage} {input_model} -> {out}"
    args = _worker_args(stage, input_model, out, f"{out.parent}/.{out.name}.<tmp>.recipe.yaml", True, False, spec)
    return shlex.join(L.build_argv(spec, args))


def run_stage_command(stage: str, input_model: str, out: Path, recipe_name: str, overrides: list[str],
                      *, resume: bool = True, force: bool = False, recipe=None, **launch_opts) -> Path:
    """Run one training stage, in this process or under a launcher (the CLI never joins the group)."""
    from l2v_cli import launch as L
    from l2v_cli.config import dump_recipe_yaml, load_recipe
    from l2v_cli.stages.worker import run_stage

    r = recipe or load_recipe(recipe_name, overrides)
    spec = launch_spec(r, **launch_opts)
    L.check_launch(spec)
    from l2v_cli.stages.convert import check_run_folder

    check_run_folder(out, "-o")  # before OUT/config.yaml is written
    fresh = not Path(out).exists()
    try:
        if not spec.distributed():
            return run_stage(stage, r, input_model, out, resume=resume, force=force, deepspeed=spec.deepspeed)
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, recipe_file = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".recipe.yaml", dir=out.parent)
        with os.fdopen(fd, "w") as f:
            f.write(dump_recipe_yaml(r))
        try:
            L.run(L.build_argv(spec, _worker_args(stage, input_model, out, recipe_file, resume, force, spec)),
                  out.parent / f"{out.name}.log")
        finally:
            os.unlink(recipe_file)
        return out
    except L2VError:
        if fresh:
            _drop_unresumable(Path(out))
        raise


def _drop_unresumable(out: Path) -> None:
    """A stage that failed before its first checkpoint leaves nothing to resume: remove the OUT it created."""
    import shutil

    from l2v_cli.stages.common import STAGE_FILE

    if out.is_dir() and not any(out.glob("step-*")) and not (out / STAGE_FILE).exists():
        shutil.rmtree(out, ignore_errors=True)


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
