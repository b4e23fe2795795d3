"""The process a training stage runs in: in-process for one CPU/GPU, or one per rank under a launcher.

    python -m l2v_cli.stages.worker STAGE INPUT OUT RECIPE.yaml [--resume|--no-resume] [--force]
                                    [--deepspeed CONFIG.json]

The recipe arrives already resolved (a YAML file written by the CLI), so every rank trains with
exactly the same settings.
"""

from __future__ import annotations

import argparse
import os
import sys

STAGES = {
    "train-mntp": ("l2v_cli.stages.mntp", "train_mntp"),
    "train-simcse": ("l2v_cli.stages.simcse", "train_simcse"),
    "train-supervised": ("l2v_cli.stages.supervised", "train_supervised"),
}


def run_stage(stage: str, recipe, input_model, out, *, resume=True, force=False, deepspeed=None):
    import importlib

    mod, fn = STAGES[stage]
    return getattr(importlib.import_module(mod), fn)(recipe, input_model, out, resume=resume,
                                                     force=force, deepspeed=deepspeed)


def main(argv: list[str] | None = None) -> int:
    from l2v_cli.config import load_recipe
    from l2v_cli.errors import L2VError

    ap = argparse.ArgumentParser(prog="l2v-stage-worker")
    ap.add_argument("stage", choices=sorted(STAGES))
    ap.add_argument("input")
    ap.add_argument("out")
    ap.add_argument("recipe")
    ap.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--deepspeed", default=None)
    a = ap.parse_args(argv)
    rank = os.environ.get("RANK", "0")
    try:
        recipe = load_recipe(a.recipe)
        run_stage(a.stage, recipe, a.input, a.out, resume=a.resume, force=a.force, deepspeed=a.deepspeed)
    except L2VError as e:
        if os.environ.get("L2V_DEBUG") == "1":
            raise
        print(f"l2v: error: [rank {rank}] {e.line()}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
