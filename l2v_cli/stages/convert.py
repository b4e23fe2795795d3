"""`l2v convert`: the recipe's stage chain, planned, resumable and invalidated precisely.

OUT/
  01_enable-bidir/  02_train-mntp/  03_train-simcse/  [04_train-supervised/]   one folder per stage
  final/            the export (a sentence-transformers / transformers model)
  eval.json         when the recipe asks for eval
Each stage folder gets `DONE.json` when it completes: the hash of its config section and of its
input (the previous stage's DONE hash, or the model spec). A rerun skips stages whose hashes still
match, resumes the first unfinished one from its last checkpoint, and refuses (without --force)
when a finished stage's hash changed — naming the first changed stage.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from l2v_cli.errors import L2VError
from l2v_cli.stages import registry
from l2v_cli.stages.mine import mine_folder, wire_mined_data
from l2v_cli.stages.nodes import LOCK, Nodes
from l2v_cli.stages.report import peak_rss_mb
from l2v_cli.stages.worker import check_run_folder, run_stage_command, worker_argv
from l2v_cli.utils.perf import matmul_gflops

DONE = "DONE.json"


@dataclass
class PlannedStage:
    name: str
    folder: Path
    config_hash: str
    input_hash: str = ""
    status: str = "run"  # done | resume | run | changed
    input: str = ""

    @property
    def hash(self) -> str:
        return _sha(self.config_hash + self.input_hash)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stage_config_hash(recipe, stage: str) -> str:
    """What determines a stage's result: its section plus the global settings that reach it."""
    from l2v_cli.config import recipe_to_dict

    d = recipe_to_dict(recipe)
    spec = registry.get(stage)
    relevant = {"section": d[spec.section], "dtype": d["dtype"], "seed": d["seed"]}
    if spec is not registry.BIDIR:
        relevant["bidir"] = d["bidir"]
    if spec.trains:  # checkpointing cadence does not change the weights
        relevant["section"] = {**relevant["section"],
                               "train": {k: v for k, v in relevant["section"]["train"].items()
                                         if k not in ("save_steps", "save_total_limit", "logging_steps")}}
    return _sha(json.dumps(relevant, sort_keys=True, default=str))


def plan(recipe, model: str, out: Path) -> list[PlannedStage]:
    """Decide what each stage will do, from what is on disk."""
    stages, prev_hash, prev_folder = [], _sha(f"model:{model}"), model
    for i, name in enumerate(recipe.stages, start=1):
        spec = registry.get(name)
        folder = out / spec.folder_name(i)
        st = PlannedStage(name, folder, stage_config_hash(recipe, name), prev_hash, input=str(prev_folder))
        marker = folder / DONE
        if marker.exists():
            st.status = "done" if json.loads(marker.read_text()).get("hash") == st.hash else "changed"
        elif spec.trains and any(folder.glob("step-*")):
            st.status = "resume"
        stages.append(st)
        if spec.feeds_next:
            prev_hash, prev_folder = st.hash, folder
    # Everything after a changed or re-run stage must run again.
    stale = False
    for st in stages:
        if stale and st.status == "done":
            st.status = "changed"
        if st.status != "done":
            stale = True
    return stages


def mark_done(st: PlannedStage, seconds: float | None = None, resolved: dict | None = None) -> None:
    tmp = st.folder / (DONE + ".tmp")
    tmp.write_text(json.dumps({"stage": st.name, "hash": st.hash, "config_hash": st.config_hash,
                               "input_hash": st.input_hash, "seconds": seconds and round(seconds, 1),
                               "peak_rss_mb": peak_rss_mb(), "resolved": resolved}, indent=1))
    os.replace(tmp, st.folder / DONE)


def convert(model: str, recipe, out: str | Path, *, force: bool = False, launch: dict | None = None,
            dry_run: bool = False, echo=print, origin=None) -> Path:
    """Run (or plan) the whole chain. `launch` holds the launcher options of `run_stage_command`;
    `origin` (from `load_recipe_with_origin`) lets the record name the recipe line or override
    behind each family-dependent value. `auto` values get the model family's (config/resolve.py)."""
    from l2v_cli.config.resolve import resolve_for_model

    out = Path(out).absolute()
    resolved = resolve_for_model(recipe, model, origin)
    recipe, provenance = resolved.recipe, resolved.provenance()
    recipe = wire_mined_data(recipe, out)
    stages = plan(recipe, model, out)
    changed = [s for s in stages if s.status == "changed" and (s.folder / DONE).exists()]
    if dry_run:
        echo(resolved.table(model))
    for n in [] if dry_run else resolved.notes:
        echo(f"l2v: note: {n}")
    echo(render_plan(stages))
    if dry_run:
        for st in stages:
            if registry.get(st.name).trains and st.status != "done":
                echo(f"{st.name}: $ {worker_argv(st.name, st.input, st.folder, recipe, launch or {})}")
        return out
    spec = _launch_spec(recipe, launch or {}) if any(registry.get(s.name).trains for s in stages) else None
    if spec is not None and spec.multi_node() and spec.node_rank > 0:
        return _follow_node0(spec, recipe, stages, out, launch or {}, echo)
    if changed and not force:
        first = changed[0]
        raise L2VError(f"the recipe changed for stage {first.folder.name} (and everything after it), "
                       f"which already completed with other settings", where=str(first.folder),
                       fix="pass --force to redo it and the stages after it, or use another -o")
    preflight(recipe, out, [s.name for s in stages if s.status != "done"], launch or {})
    nodes = Nodes(spec, out) if spec is not None and spec.multi_node() else None
    if nodes is not None:
        nodes.connect()  # before anything is written: a bad port or a rank given twice writes nothing
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        if nodes is not None:
            nodes.share_folder()
            nodes.publish_plan([s.status for s in stages])
        peak = matmul_gflops(_compute_dtype(recipe))  # the machine's rate now, for the summary's "of peak"
        for i, st in enumerate(stages):
            if st.status == "done":
                continue
            if st.status == "changed" and st.folder.exists():
                shutil.rmtree(st.folder)
            t0 = time.perf_counter()
            run_one(st, recipe, launch or {}, stages=stages, model=model, echo=echo, provenance=provenance)
            mark_done(st, time.perf_counter() - t0, provenance)
            if nodes is not None:
                nodes.done(i)
    except BaseException as e:
        if nodes is not None:
            nodes.fail(e)
            if created and not any(p.name != LOCK for p in out.iterdir()):
                shutil.rmtree(out, ignore_errors=True)  # the other nodes never got going: leave nothing
        raise
    summarize(recipe, stages, model, peak)
    if nodes is not None:
        nodes.finish()
    return out / registry.EXPORT.folder


def _launch_spec(recipe, launch: dict):
    from l2v_cli import launch as L

    return L.launch_spec(recipe, **launch)


def _follow_node0(spec, recipe, stages: list[PlannedStage], out: Path, launch: dict, echo) -> Path:
    """A node > 0 of a multi-node run: node 0 decides the plan and runs the single-process stages;
    this node joins each training stage with its own launcher and writes nothing shared."""
    from l2v_cli import launch as L

    L.check_launch(spec)
    nodes = Nodes(spec, out)
    nodes.connect()
    nodes.share_folder()
    statuses = nodes.plan()
    for st, status in zip(stages, statuses):
        st.status = status
    echo(f"{spec.node_label}: following node 0's plan")
    for i, st in enumerate(stages):
        if st.status == "done":
            continue
        if registry.get(st.name).trains:
            run_one(st, recipe, launch, model=st.input, echo=echo)
        nodes.wait_stage(i, st.folder.name)
    nodes.finish()
    echo(f"{spec.node_label}: done")
    return out / registry.EXPORT.folder


def _compute_dtype(recipe) -> str:
    from l2v_cli.utils.device import resolve_dtype

    return str(resolve_dtype(recipe.dtype)).replace("torch.", "")


def summarize(recipe, stages, model: str, peak_gflops: float | None) -> None:
    """Print the stage table (time, tokens/s, FLOP rate, memory) and the eval table, on stderr."""
    from rich.console import Console

    from l2v_cli.stages import report
    from l2v_cli.stages.evaluate import render_table

    console = Console(stderr=True)
    rows = report.stage_rows(stages, recipe, model, peak_gflops)
    report.render(rows, peak_gflops, _compute_dtype(recipe), console)
    ev = next((s.folder for s in stages if s.name == registry.EVAL.name), None)
    for name in ("ablation.json", "table.json"):
        if ev is not None and (ev / name).exists():
            render_table(json.loads((ev / name).read_text()), console)
            break


def check_stage_data(recipe, stage: str) -> None:
    """A local data path of a training stage must exist (checked before anything is written)."""
    from l2v_cli.data.text import looks_local, missing_path_error
    from l2v_cli.utils.paths import resolve_data_path

    section = registry.get(stage).section
    data = getattr(recipe, section).data
    for name in (data.path if isinstance(data.path, list) else [data.path] if data.path else []):
        if data.format != "hub" and looks_local(name) and not resolve_data_path(name).exists():
            raise missing_path_error(name, f"{section}.data")


def preflight(recipe, out: Path, stages: list[str], launch: dict) -> None:
    """Cheap checks of what the stages to run need, before the first one writes anything."""
    check_run_folder(out)
    train = [s for s in stages if registry.get(s).trains]
    if train:
        from l2v_cli import launch as L

        L.check_launch(L.launch_spec(recipe, **launch))
    mined = mine_folder(recipe, out) is not None
    for name in train + [s for s in stages if s == registry.MINE.name]:
        if not (mined and name == registry.SUPERVISED.name):  # its data is what `mine` will write
            check_stage_data(recipe, name)
    if registry.EVAL.name in stages:
        from l2v_cli.stages.evaluate import eval_tasks

        eval_tasks(recipe.eval)  # unknown task names / limits fail now, not after training


def run_one(st: PlannedStage, recipe, launch: dict, *, stages=(), model: str = "", echo=print,
            provenance: dict | None = None) -> None:
    """Run one planned stage: training stages through the worker (maybe under a launcher), the
    others in this process."""
    from l2v_cli.stages.common import STAGE_FILE

    spec = registry.get(st.name)
    if spec.trains:
        if (st.folder / STAGE_FILE).exists():  # finished, but killed before DONE was written
            return
        run_stage_command(st.name, st.input, st.folder, recipe, resume=True, provenance=provenance, **launch)
        return
    spec.function()(recipe, st.input, st.folder, registry.RunContext(model=model, stages=tuple(stages), echo=echo))


def render_plan(stages: list[PlannedStage]) -> str:
    width = max(len(s.folder.name) for s in stages)
    lines = ["stage plan:"]
    for s in stages:
        lines.append(f"  {s.folder.name:<{width}}  {s.status:<7}  {s.name}")
    return "\n".join(lines)
