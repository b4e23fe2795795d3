"""Stage `mine`: hard negatives mined with the model so far, for the supervised stage after it.

    stages: [enable-bidir, train-mntp, mine, train-supervised, export, eval]

The stage merges its input chain into a temporary bidirectional model, runs `l2v mine` with the
recipe's `mine` section (l2v_cli/mine/run.py: exact top-k, rank window, false-negative guard,
seeded sampling) and writes the E5 layout plus `instructions.json` and `mining.json` into its
folder. It does not feed the next stage a model (`feeds_next=False`): `train-supervised` still
starts from the stage before `mine`, and `wire_mined_data` points its data at this folder.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path

from l2v_cli.errors import L2VError
from l2v_cli.stages import registry

STAGE = registry.of_module(__name__)


def mine_folder(recipe, out: Path) -> Path | None:
    """The mine stage's folder in run `out` (None when the recipe has no mine stage)."""
    if STAGE.name not in recipe.stages:
        return None
    return Path(out) / STAGE.folder_name(recipe.stages.index(STAGE.name) + 1)


def wire_mined_data(recipe, out: Path):
    """A copy of `recipe` whose supervised stage trains on the mine stage's output; the mine stage
    mines the supervised data when its own `mine.data` is empty. Unchanged without a mine stage."""
    folder = mine_folder(recipe, out)
    if folder is None:
        return recipe
    recipe = copy.deepcopy(recipe)
    m, sup = recipe.mine, recipe.supervised
    if not m.data.path:
        if not sup.data.path:
            raise L2VError("stage 'mine' has no pairs to mine", where="mine.data.path",
                           fix="set mine.data.path (or supervised.data.path) to query/positive pairs")
        m.data = copy.deepcopy(sup.data)
        if m.instructions is None:
            m.instructions = sup.instructions
    sup.data = type(sup.data)(path=str(folder), format="e5")
    sup.instructions = str(folder / "instructions.json")
    return recipe


def run_mine(recipe, input_model: str | Path, out: str | Path, ctx: registry.RunContext) -> dict:
    """The mine stage of a run: merge `input_model`'s chain, mine into `out` (all or nothing)."""
    from l2v_cli.mine.run import check_range, mine
    from l2v_cli.stages.export import export_from_recipe

    cfg, out = recipe.mine, Path(out)
    if len(cfg.range) != 2:
        raise L2VError(f"mine.range must be [LO, HI], got {cfg.range}", where="mine.range", fix="e.g. [10, 100]")
    rank_range = check_range(*cfg.range, shown=cfg.range, where="mine.range")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.model.", dir=out.parent))
    try:
        model = tmp / "model"
        export_from_recipe(recipe, input_model, model, overwrite=True, st_only=True)
        return mine(str(model), cfg.data.path, out, corpus=cfg.corpus, negatives=cfg.negatives, rank_range=rank_range,
                    max_score_ratio=cfg.max_score_ratio, seed=recipe.seed, chunk_size=cfg.chunk_size,
                    batch_size=cfg.batch_size, max_length=cfg.max_length, pooling=cfg.pooling,
                    dtype=recipe.dtype, max_samples=cfg.data.max_samples, instructions=cfg.instructions,
                    overwrite=True, show_progress=True, echo=ctx.echo)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["run_mine", "wire_mined_data", "mine_folder"]
