"""Quality per byte: a task scored on truncated (`--dims`) and quantized (`--precision`) embeddings.

Every (dim, precision) is a `CompactView` of the cached full-size float embeddings — nothing is
encoded twice. A view keeps the first `dim` numbers, normalises them, and quantizes them with
sentence-transformers' quantizer (`l2v_cli.encoding.quantize`); tasks then score the vectors as a
search engine would (cosine on int8, Hamming on bits). int8/uint8 ranges are calibrated on the
task's stored texts: the corpus for retrieval, every text of the task otherwise (the first
`encode` call of a view, which for STS, classification and clustering is all of them).

Retrieval runs through `CompactView.search`: queries and documents at the view's precision; with
a rescoring representation (`binary+int8`) the best `rescore_multiplier × k` candidates of that
search are rescored with the float query against the documents' int8 (or binary) vectors.
Elsewhere there is no search step, so `P+R` scores as `P`.

A row: {task, protocol, dim, precision, score, bytes (per stored vector), share (of the same
task's full-width float32 score)}.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from l2v_cli.encoding.dims import FULL, Dim, resolve_dims
from l2v_cli.encoding.quantize import (Precision, bytes_per_vector, calibration_ranges, dequantize, quantize,
                                       scoring_vectors)
from l2v_cli.eval.metrics import cosine_search

__all__ = ["CompactView", "RESCORE_MULTIPLIER", "per_byte_rows"]

RESCORE_MULTIPLIER = 4  # candidates rescored per result kept (sentence-transformers' default is 2)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class CompactView:
    """An encoder-like view: `encode` gives the vectors a search at (dim, precision) scores."""

    def __init__(self, base, dim: int, precision: Precision, rescore_multiplier: int = RESCORE_MULTIPLIER):
        self.base, self.dim, self.precision = base, dim, precision
        self.rescore_multiplier = rescore_multiplier
        self.ranges: np.ndarray | None = None

    def floats(self, texts: Sequence[str], instruction: str | None = None) -> np.ndarray:
        """Truncated, normalised float32 embeddings (from the cache)."""
        emb = np.asarray(self.base.encode(list(texts), instruction=instruction), dtype=np.float32)
        return _normalise(emb[:, :self.dim])

    def _stored(self, floats: np.ndarray) -> np.ndarray:
        if self.precision.store in ("int8", "uint8") or self.precision.rescore == "int8":
            if self.ranges is None:  # the first texts seen calibrate (see the module doc)
                self.ranges = calibration_ranges(floats)
        return quantize(floats, self.precision, self.ranges)

    def encode(self, texts: Sequence[str], instruction: str | None = None, **_) -> np.ndarray:
        return scoring_vectors(self._stored(self.floats(texts, instruction)), self.precision, self.dim)

    def search(self, queries: Sequence[str], instruction: str | None, docs: Sequence[str], k: int) -> np.ndarray:
        """(Q, k) document indices, best first: the search at this precision, then the rescoring."""
        d_float = self.floats(docs)
        d_stored = self._stored(d_float)  # the corpus calibrates
        q_float = self.floats(queries, instruction)
        p = self.precision
        d_vec = scoring_vectors(d_stored, p, self.dim)
        q_vec = scoring_vectors(quantize(q_float, p, self.ranges), p, self.dim)
        if p.rescore is None:
            return cosine_search(q_vec, d_vec, k)
        cand = cosine_search(q_vec, d_vec, k * self.rescore_multiplier)
        rescore = Precision(p.rescore)
        docs_r = dequantize(d_stored if rescore.store == p.store else quantize(d_float, rescore, self.ranges),
                            rescore, self.ranges, self.dim)
        scores = np.einsum("qd,qkd->qk", q_float, docs_r[cand])  # float query · stored documents
        order = np.argsort(-scores, axis=1, kind="stable")  # ties: the search's order
        return np.take_along_axis(cand, order, axis=1)[:, :k]

    def __getattr__(self, name):  # name, settings, ... of the base encoder
        return getattr(self.base, name)


def per_byte_rows(task, protocol: str, base, full_result: dict, dims: Sequence[Dim], precisions: Sequence[Precision],
                  hidden: int, rescore_multiplier: int = RESCORE_MULTIPLIER) -> list[dict]:
    """One row per (dim, precision) of a task already scored at full width in float32
    (`full_result`, reused for that cell)."""
    metric = task.main_metric
    full = full_result.get(metric)
    rows = []
    for dim, label in zip(resolve_dims(dims, hidden, "--dims"), dims):
        for p in precisions:
            if dim == hidden and p == Precision("float32"):
                score = full
            else:
                score = task.run(CompactView(base, dim, p, rescore_multiplier)).get(metric)
            rows.append({"task": task.name, "protocol": protocol, "metric": metric, "dim": dim,
                         "dim_label": str(label) if label == FULL else str(dim), "precision": str(p),
                         "score": score, "bytes": bytes_per_vector(dim, p),
                         "share": (score / full) if full and score is not None else None})
    return rows
