"""Per-dimension scaling of the pooled embedding, calibrated on unlabelled text.

Why. A converted decoder's pooled embedding has a few dimensions whose values are many times the
others' spread (SmolLM2-135M after the cpu-demo chain: the largest per-dimension standard deviation
is 6.8x the median, the largest mean 28x). A cosine is then dominated by those few numbers. The
quantization table showed it first: int8, which maps each dimension's own [min, max] onto 256
buckets, scored 5-9 points above float32 on STS-B and SciFact (docs/small-vectors.md). Dividing
each dimension by its standard deviation over a sample of ordinary sentences evens them out:
STS-B dev (plain sentence-transformers, no prompt) 72.19 -> 75.47; centering as well gave 74.39,
so only the scale is kept (docs/quality.md).

The scale is a diagonal sentence-transformers `Dense` module (identity activation, no bias)
between Pooling and Normalize, so `SentenceTransformer(path).encode(texts)` applies it with no
code of ours; `config.json` records it under `l2v.dim_scale` and our `Encoder` reads the same
module. Plain transformers users multiply the pooled vector by it (the model card shows how).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from l2v_cli.errors import L2VError

DENSE_TYPE = "sentence_transformers.models.Dense"
IDENTITY = "torch.nn.modules.linear.Identity"


def fit_dim_scale(emb: np.ndarray) -> np.ndarray:
    """1 / the standard deviation of each dimension of `emb` (N, D), N >= 2. A dimension that never
    varies keeps scale 1/median std (it carries nothing, and must not blow up)."""
    emb = np.asarray(emb, dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] < 2:
        raise L2VError(f"calibration needs at least 2 embeddings, got {emb.shape[0] if emb.ndim == 2 else 0}",
                       where="calibration", fix="give a calibration file with more non-empty lines")
    sd = emb.std(axis=0)
    floor = max(float(np.median(sd)), 1e-12)
    return (1.0 / np.where(sd > 1e-6 * floor, sd, floor)).astype(np.float32)


def write_dim_scale(folder: Path, name: str, scale: np.ndarray) -> None:
    """`folder/name`: a sentence-transformers Dense module whose weight is diag(`scale`)."""
    from safetensors.torch import save_file

    d = Path(folder) / name
    d.mkdir()
    n = int(scale.shape[0])
    (d / "config.json").write_text(json.dumps({"in_features": n, "out_features": n, "bias": False,
                                               "activation_function": IDENTITY}, indent=2) + "\n")
    save_file({"linear.weight": torch.diag(torch.from_numpy(np.asarray(scale, dtype=np.float32)))},
              str(d / "model.safetensors"))


def read_dim_scale(folder: str | Path | None) -> np.ndarray | None:
    """The diagonal of the Dense module our export wrote into `folder` (modules.json), or None.
    A Dense module that is not a plain diagonal scale is not ours to reproduce: one clear error."""
    if folder is None or not (Path(folder) / "modules.json").is_file():
        return None
    from safetensors.torch import load_file

    folder = Path(folder)
    dense = [m for m in json.loads((folder / "modules.json").read_text()) if m.get("type", "").endswith(".Dense")]
    if not dense:
        return None
    d = folder / dense[0]["path"]
    cfg = json.loads((d / "config.json").read_text())
    w = load_file(str(d / "model.safetensors")).get("linear.weight")
    diagonal = w is not None and w.ndim == 2 and w.shape[0] == w.shape[1] and bool(
        torch.equal(w, torch.diag(torch.diagonal(w))))
    if len(dense) > 1 or not diagonal or cfg.get("bias") or cfg.get("activation_function") != IDENTITY:
        raise L2VError(f"{d} is a Dense module l2v did not write (not a diagonal scale without bias)",
                       where=str(folder), fix="load this model with sentence-transformers directly")
    return torch.diagonal(w).float().numpy().copy()


__all__ = ["fit_dim_scale", "write_dim_scale", "read_dim_scale", "DENSE_TYPE"]
