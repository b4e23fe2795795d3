"""Exact top-k cosine search in chunks: memory bounded by one query chunk x one corpus chunk.

    hits = TopK(n_queries, k)
    for start, corpus_chunk in corpus_chunks:            # unit-length float32 rows
        hits.update(query_chunk_rows, query_chunk, start, corpus_chunk)
    scores, indices = hits.scores, hits.indices          # (n_queries, k), best first

Cost: n_queries x n_corpus x dim multiply-adds, all of it matmul. That is exact and simple up to
a few million pairs on a CPU (1e5 queries x 1e5 documents x 1024 dims = 1e13 FLOPs, about a
minute at 200 GFLOP/s); past ~1e15 FLOPs an approximate index (FAISS IVF/HNSW) pays for itself.
"""

from __future__ import annotations

import numpy as np
import torch


class TopK:
    """The running k best (score, corpus index) per query over corpus chunks seen so far."""

    def __init__(self, n_queries: int, k: int):
        self.k = k
        self.scores = torch.full((n_queries, k), float("-inf"))
        self.indices = torch.full((n_queries, k), -1, dtype=torch.long)

    def update(self, rows: slice, queries: torch.Tensor, start: int, docs: torch.Tensor) -> torch.Tensor:
        """Merge the scores of `queries` (the rows `rows` of the result) against `docs` (corpus
        rows start, start+1, ...). Returns the (q, d) score block (for lookups such as the
        positives' scores)."""
        block = queries @ docs.T
        both = torch.cat([self.scores[rows], block], dim=1)
        ids = torch.cat([self.indices[rows],
                         torch.arange(start, start + docs.shape[0]).expand(block.shape[0], -1)], dim=1)
        top = torch.topk(both, min(self.k, both.shape[1]), dim=1)  # sorted, best first
        self.scores[rows, :top.values.shape[1]] = top.values
        self.indices[rows, :top.values.shape[1]] = torch.gather(ids, 1, top.indices)
        return block


def unit_rows(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return torch.nn.functional.normalize(t, dim=1)
