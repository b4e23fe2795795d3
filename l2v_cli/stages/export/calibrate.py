"""The export's per-dimension scale (encoding/dim_scale.py), fitted on a sample of unlabelled text
encoded exactly as users will call the export: bare text, the export's pooling, its max length."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Optional

import numpy as np

from l2v_cli.encoding.dim_scale import fit_dim_scale
from l2v_cli.errors import L2VError

SEED = 0


def check_calibration(calibration: Optional[str | Path], samples: int) -> None:
    """Fail before any weights are loaded: a missing file, or a sample size below 2."""
    from l2v_cli.data.text import looks_local
    from l2v_cli.utils.paths import resolve_data_path

    if calibration is None:
        return
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
        raise L2VError(f"calibration_samples must be a whole number >= 2, got {samples!r}",
                       where="--calibration-samples", fix="e.g. --calibration-samples 2000")
    if looks_local(str(calibration)) and not resolve_data_path(calibration).exists():
        raise L2VError(f"calibration data not found: {calibration}", where="export.calibration (--calibration)",
                       fix="give a .txt/.jsonl/.csv/.parquet file of ordinary texts, "
                           "e.g. data/unsup/wiki_sentences.txt")


def fit_export_scale(decoder, tokenizer, *, pooling: str, max_length: int, calibration: str | Path,
                     samples: int, batch_size: int = 16) -> tuple[np.ndarray, dict]:
    """(scale, record): 1/std per dimension over `samples` texts drawn (seeded) from `calibration`."""
    from l2v_cli.config.schema import DataConfig
    from l2v_cli.data.text import load_texts
    from l2v_cli.encoding.encoder import Encoder

    ds = load_texts(DataConfig(path=str(calibration)), key="export.calibration")
    n = len(ds)
    keep = sorted(random.Random(SEED).sample(range(n), samples)) if samples < n else list(range(n))
    texts = ds.select(keep)["text"]
    if len(texts) < 2:
        raise L2VError(f"the calibration data holds {len(texts)} text; the scale needs at least 2",
                       where=str(calibration), fix="give a file with more non-empty lines")
    enc = Encoder(decoder, tokenizer, pooling=pooling, max_length=max_length)
    emb = enc.encode(texts, batch_size=batch_size, show_progress=True)
    scale = fit_dim_scale(emb)
    sd = emb.std(axis=0)
    return scale, {"data": str(calibration), "texts": len(texts), "seed": SEED,
                   "max_over_median_std": round(float(sd.max() / max(np.median(sd), 1e-12)), 2)}


__all__ = ["check_calibration", "fit_export_scale"]
