"""Checkpoint folders `step-000200/`: appear only complete, rotate, and refuse a foreign recipe on resume."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from l2v_cli.errors import L2VError

STEP_RE = re.compile(r"^step-(\d{6,})$")
STAMP = "l2v_checkpoint.json"  # written last into a checkpoint: the stage config it was made with


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def checkpoints(stage_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a folder counts only once it carries the stamp)."""
    found = [p for p in Path(stage_dir).glob("step-*") if STEP_RE.match(p.name) and (p / STAMP).exists()]
    return sorted(found, key=lambda p: int(STEP_RE.match(p.name).group(1)))


def last_checkpoint(stage_dir: Path) -> Path | None:
    cks = checkpoints(stage_dir)
    return cks[-1] if cks else None


def remove_stale(stage_dir: Path) -> None:
    """Drop what an interrupted save left: HF's in-progress `checkpoint-N` and unstamped step dirs."""
    for p in Path(stage_dir).glob("checkpoint-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in Path(stage_dir).glob("step-*"):
        if not (p / STAMP).exists():
            shutil.rmtree(p, ignore_errors=True)


def rotate(stage_dir: Path, keep: int | None) -> None:
    if not keep or keep <= 0:
        return
    for p in checkpoints(stage_dir)[:-keep]:
        shutil.rmtree(p, ignore_errors=True)


def stamp(ckpt: Path, stage_config: dict) -> None:
    (ckpt / STAMP).write_text(json.dumps({"config": stage_config}, indent=1, sort_keys=True))


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


# Keys that may change between a run and its resume without changing what is trained.
RESUMABLE_KEYS = ("train.save_steps", "train.save_total_limit", "train.logging_steps",
                  "train.dataloader_num_workers", "train.max_steps")


def check_compatible(ckpt: Path, stage_config: dict) -> None:
    """Refuse to resume from a checkpoint made with a different recipe, naming the keys."""
    saved = json.loads((ckpt / STAMP).read_text())["config"]
    a, b = _flatten(saved), _flatten(json.loads(json.dumps(stage_config)))
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUMABLE_KEYS)
    if diff:
        shown = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:5])
        raise L2VError(f"checkpoint {ckpt.name} was made with a different recipe ({shown})",
                       where=str(ckpt),
                       fix="rerun with the original settings, or pass --force to restart the stage from scratch")
