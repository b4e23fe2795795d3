"""The scores `l2v eval` reports, as plain functions on numbers (0–1; the tasks multiply by 100).

Each follows the reference implementation MTEB uses, so numbers are comparable:
  spearman       scipy.stats.spearmanr (average ranks for ties)
  ndcg_at_k      trec_eval / pytrec_eval `ndcg_cut_k`: gain = the judged relevance (linear, not
                 2^rel − 1), discount 1/log2(rank + 1), ideal from all judged-relevant documents
  recall_at_k    trec_eval `recall_k`: relevant documents in the top k / all relevant documents
  accuracy       fraction of exact matches
  v_measure      sklearn `v_measure_score` (harmonic mean of homogeneity and completeness)
Retrieval metrics average over the queries that have at least one relevant document; a query
with no ranking (not retrieved at all) scores 0.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

Qrels = Mapping[str, Mapping[str, int]]  # query id -> {doc id: relevance}
Ranking = Mapping[str, Sequence[str]]  # query id -> doc ids, best first


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) cosine similarities; a zero vector has similarity 0 to everything."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return an @ bn.T


def cosine_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, D) matrices."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    den = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return (a * b).sum(1) / den


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (ties get their average rank); nan when either side is constant."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} vs {len(y)} values")
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def _relevant(judged: Mapping[str, int]) -> dict[str, int]:
    return {d: int(r) for d, r in judged.items() if int(r) > 0}


def ndcg_at_k(qrels: Qrels, ranking: Ranking, k: int = 10) -> float:
    """Mean nDCG@k over queries with a relevant document (trec_eval's ndcg_cut_k)."""
    scores = []
    for qid, judged in qrels.items():
        rel = _relevant(judged)
        if not rel:
            continue
        ranked = list(ranking.get(qid, []))[:k]
        dcg = sum(rel.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked))
        ideal = sorted(rel.values(), reverse=True)[:k]
        idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
        scores.append(dcg / idcg)
    return float(np.mean(scores)) if scores else float("nan")


def recall_at_k(qrels: Qrels, ranking: Ranking, k: int = 100) -> float:
    """Mean over queries of |relevant ∩ top k| / |relevant| (trec_eval's recall_k)."""
    scores = []
    for qid, judged in qrels.items():
        rel = _relevant(judged)
        if not rel:
            continue
        top = set(list(ranking.get(qid, []))[:k])
        scores.append(len(top & rel.keys()) / len(rel))
    return float(np.mean(scores)) if scores else float("nan")


def accuracy(y_true: Sequence, y_pred: Sequence) -> float:
    y_true, y_pred = list(y_true), list(y_pred)
    if len(y_true) != len(y_pred):
        raise ValueError(f"accuracy: {len(y_true)} labels vs {len(y_pred)} predictions")
    if not y_true:
        return float("nan")
    return sum(a == b for a, b in zip(y_true, y_pred)) / len(y_true)


def v_measure(labels_true: Sequence, labels_pred: Sequence) -> float:
    from sklearn.metrics.cluster import v_measure_score

    return float(v_measure_score(list(labels_true), list(labels_pred)))


def top_k(scores: np.ndarray, doc_ids: Sequence[str], k: int) -> list[list[str]]:
    """For each row of a (Q, D) score matrix, the ids of the k best documents, best first
    (ties broken by corpus order, so the ranking is deterministic)."""
    return [[doc_ids[j] for j in row] for row in top_rows(scores, k)]


def top_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """(Q, min(k, D)) column indices of each row's k best scores, best first (ties: lower index)."""
    k = min(k, scores.shape[1])
    out = np.empty((len(scores), k), dtype=np.int64)
    for i, row in enumerate(scores):
        part = np.argpartition(-row, k - 1)[:k] if k < len(row) else np.arange(len(row))
        out[i] = part[np.lexsort((part, -row[part]))]
    return out


def cosine_search(q: np.ndarray, d: np.ndarray, k: int, chunk: int = 256) -> np.ndarray:
    """(Q, min(k, D)) indices of each query's best documents by cosine, best first; queries in
    chunks so memory stays bounded for big corpora."""
    parts = [top_rows(cosine_matrix(q[s:s + chunk], d), k) for s in range(0, len(q), chunk)]
    return np.concatenate(parts) if parts else np.zeros((0, min(k, len(d))), dtype=np.int64)
