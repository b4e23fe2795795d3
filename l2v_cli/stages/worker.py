"""How a training stage runs: in this process for one CPU/GPU, or one worker process per rank under a launcher.

    python -m l2v_cli.stages.worker STAGE INPUT OUT RECIPE.yaml [--resume|--no-resume] [--force]
                                    [--deepspeed CONFIG.json] [--provenance RESOLVED.json]

The recipe arrives already resolved (a YAML file written by `run_stage_command`), so every rank
trains with exactly the same settings. `run_stage_command` is what `l2v convert` and the
`l2v train-*` commands call; `worker_argv` shows the command it would start (--dry-run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from l2v_cli.errors import L2VError
from l2v_cli.stages import registry


def run_stage(stage: str, recipe, input_model, out, *, resume=True, force=False, deepspeed=None,
              provenance: dict | None = None):
    """Run training stage `stage` (a registry name) in this process."""
    return registry.get(stage).function()(recipe, input_model, out, resume=resume, force=force,
                                          deepspeed=deepspeed, provenance=provenance)


def _worker_args(stage, input_model, out, recipe_file, resume, force, spec, provenance_file=None) -> list[str]:
    args = [stage, str(input_model), str(out), str(recipe_file), "--resume" if resume else "--no-resume"]
    if force:
        args.append("--force")
    if spec.deepspeed:
        args += ["--deepspeed", spec.deepspeed]
    if provenance_file:
        args += ["--provenance", str(provenance_file)]
    return args


def worker_argv(stage, input_model, out, recipe, launch_opts: dict) -> str:
    """The launch command a stage will run (for --dry-run); the recipe file is written at launch."""
    import shlex

    from l2v_cli import launch as L

    spec = L.launch_spec(recipe, **launch_opts)
    if not spec.distributed():
        return f"(in this process) {stage} {input_model} -> {out}"
    args = _worker_args(stage, input_model, out, f"{out.parent}/.{out.name}.<tmp>.recipe.yaml", True, False, spec)
    return shlex.join(L.build_argv(spec, args))


def check_run_folder(out: Path, where: str = "-o") -> None:
    """OUT must be (or become) a folder: neither it nor any parent may be a file."""
    out = Path(out)
    blocker = next((p for p in [out, *out.parents] if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        what = f"{out} exists and is a file" if blocker == out else f"{blocker} (a parent of {out}) is a file"
        raise L2VError(f"cannot use {out} as the run folder: {what}", where=where,
                       fix="choose another -o (a folder path)")


def run_stage_command(stage: str, input_model: str, out: Path, recipe, *, resume: bool = True,
                      force: bool = False, provenance: dict | None = None, **launch_opts) -> Path:
    """Run one training stage, in this process or under a launcher (the caller never joins the group).

    `recipe` is a loaded Recipe; `launch_opts` are the launcher options (gpus, nodes, hostfile,
    launcher, deepspeed, master_port) over the recipe's `launcher` section."""
    from l2v_cli import launch as L
    from l2v_cli.config import dump_recipe_yaml

    spec = L.launch_spec(recipe, **launch_opts)
    L.check_launch(spec)
    out = Path(out)
    check_run_folder(out, "-o")  # before OUT/config.yaml is written
    fresh = not out.exists()
    shared = spec.node_rank == 0  # nodes > 0 write nothing shared: their files go to a node-local folder
    try:
        if not spec.distributed():
            return run_stage(stage, recipe, input_model, out, resume=resume, force=force,
                             deepspeed=spec.deepspeed, provenance=provenance)
        if shared:
            out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="l2v-node-") as local:
            # The resolved recipe for the workers: next to OUT on node 0 (DeepSpeed's ssh launch reads it
            # on every node), in a node-local folder elsewhere (each node's launcher starts its own workers).
            where = out.parent if shared else Path(local)
            files = []
            try:
                fd, recipe_file = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".recipe.yaml", dir=where)
                files.append(recipe_file)
                with os.fdopen(fd, "w") as f:
                    f.write(dump_recipe_yaml(recipe))
                prov_file = None
                if provenance:
                    fd, prov_file = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".provenance.json", dir=where)
                    files.append(prov_file)
                    with os.fdopen(fd, "w") as f:
                        json.dump(provenance, f)
                hostfile = None
                if spec.launcher == "deepspeed" and spec.multi_node() and not spec.hostfile:
                    hostfile = str(Path(local) / "hostfile")
                    Path(hostfile).write_text(L.no_ssh_hostfile(spec))
                args = _worker_args(stage, input_model, out, recipe_file, resume, force, spec, prov_file)
                log = out.parent / (f"{out.name}.log" if shared else f"{out.name}.node{spec.node_rank}.log")
                L.run(L.build_argv(spec, args, hostfile), log, node=spec.node_label if spec.multi_node() else "")
            finally:
                for f in files:
                    os.unlink(f)
        return out
    except L2VError:
        if fresh and shared:
            _drop_unresumable(out)
        raise


def _drop_unresumable(out: Path) -> None:
    """A stage that failed before its first checkpoint leaves nothing to resume: remove the OUT it created."""
    from l2v_cli.stages.common import STAGE_FILE

    if out.is_dir() and not any(out.glob("step-*")) and not (out / STAGE_FILE).exists():
        shutil.rmtree(out, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    from l2v_cli.config import load_recipe

    ap = argparse.ArgumentParser(prog="l2v-stage-worker")
    ap.add_argument("stage", choices=registry.TRAIN_NAMES)
    ap.add_argument("input")
    ap.add_argument("out")
    ap.add_argument("recipe")
    ap.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--deepspeed", default=None)
    ap.add_argument("--provenance", default=None)
    a = ap.parse_args(argv)
    rank = os.environ.get("RANK", "0")
    from l2v_cli import launch as L

    L.record_rank("started")

    def stopped(signum, frame):  # the launcher stops the others when one rank fails
        L.record_rank("ended", how=f"was stopped by the launcher (signal {signum})")
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stopped)
    how = "ok"
    try:
        recipe = load_recipe(a.recipe)
        init_process_group(recipe.launcher.timeout_s)
        provenance = json.loads(Path(a.provenance).read_text()) if a.provenance else None
        run_stage(a.stage, recipe, a.input, a.out, resume=a.resume, force=a.force, deepspeed=a.deepspeed,
                  provenance=provenance)
    except L2VError as e:
        how = f"failed: {e.line()}"
        if os.environ.get("L2V_DEBUG") == "1":
            raise
        print(f"l2v: error: [rank {rank}] {e.line()}", file=sys.stderr, flush=True)
        return 2
    except BaseException as e:
        how = f"stopped: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
        raise
    finally:
        L.record_rank("ended", how=how)
    return 0


def init_process_group(timeout_s: int) -> None:
    """Join the process group with the recipe's collective timeout (`launcher.timeout_s`): when a
    rank dies, a collective waiting for it fails within that time (gloo: at once, when the dead
    peer's connection closes). The Trainer (accelerate, DeepSpeed) reuses the group."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo",
                                timeout=timedelta(seconds=timeout_s))


if __name__ == "__main__":
    sys.exit(main())
