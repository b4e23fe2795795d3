"""The export stage of a run: a recipe's `export` section. `formats: [st]` (default) is the
sentence-transformers folder (run.py); `[st, gguf]` adds the llama.cpp file(s) to it (gguf_files.py)."""

from __future__ import annotations

from pathlib import Path

from l2v_cli.errors import L2VError
from l2v_cli.stages.export.gguf_files import export_gguf
from l2v_cli.stages.export.run import export


def export_from_recipe(recipe, source: str | Path, out: str | Path, *, overwrite: bool = False,
                       stage_input: str | Path | None = None, st_only: bool = False) -> Path:
    """`export` with the settings of a recipe's `export` section (what `l2v convert` uses).
    `st_only`: the sentence-transformers folder alone, whatever `export.formats` says (the
    temporary models that `mine` and ablation eval points encode with need no GGUF)."""
    e = recipe.export
    max_len = getattr(getattr(recipe, "eval", None), "max_length", 512) or 512
    if not st_only and "gguf" in (getattr(e, "formats", None) or ["st"]):
        if "st" not in e.formats:
            raise L2VError("export.formats in a recipe must include st (eval and the report read that folder)",
                           where="export.formats", fix="use [st, gguf]")
        return export_gguf(source, out, formats=e.formats, gguf_types=e.gguf_types, pooling=e.pooling,
                           normalize=e.normalize, query_instruction=e.query_instruction,
                           document_instruction=e.document_instruction, overwrite=overwrite, dtype=e.dtype,
                           max_shard_size=e.max_shard_size, recipe=recipe, max_seq_length=max_len,
                           stage_input=stage_input, calibration=e.calibration,
                           calibration_samples=e.calibration_samples).out
    return export(source, out, dtype=e.dtype, pooling=e.pooling, normalize=e.normalize,
                  max_shard_size=e.max_shard_size, query_instruction=e.query_instruction,
                  document_instruction=e.document_instruction, overwrite=overwrite, recipe=recipe,
                  max_seq_length=max_len, stage_input=stage_input, calibration=e.calibration,
                  calibration_samples=e.calibration_samples)


def run_export(recipe, source: str | Path, out: str | Path, ctx=None) -> Path:
    """The export stage of a run: the recipe's `export` section; replaces a folder an interrupted run left."""
    return export_from_recipe(recipe, source, out, overwrite=True)
