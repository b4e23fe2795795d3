"""`mine()`: hard negatives for (query, positive) pairs, retrieved by the model being trained.

    stats = mine("runs/mntp-export", "data/supervised", "runs/mined", rank_range=(10, 100))

For each data set of PAIRS (an E5 folder or triplet/pair files; `negative` is optional):
queries are encoded with their data set's instruction, the corpus (the set's distinct positives,
or `corpus=FILE` shared by every set) without; exact top-k search (`search.TopK`); negatives
chosen by `negatives.choose_negatives` (positive and its copies removed, rank window, false-
negative guard, seeded sampling). Output: OUT/<set>.jsonl rows {query, positive, negative} (one
row per mined negative; the E5 layout `train-supervised` reads), OUT/instructions.json, and
OUT/mining.json with the statistics. OUT is written atomically. Embeddings go through the eval
embedding cache in chunks, so a rerun encodes nothing and memory stays bounded by a chunk.
A query left with no candidate keeps its shipped negative when it has one, else it is dropped;
both are counted.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from l2v_cli.encoding import as_prefix
from l2v_cli.errors import L2VError
from l2v_cli.mine.negatives import choose_negatives
from l2v_cli.mine.search import TopK, unit_rows


def parse_range(text: str) -> tuple[int, int]:
    """'10:100' -> (10, 100): candidate ranks lo..hi-1 (0 = the best non-positive candidate)."""
    lo, sep, hi = str(text).partition(":")
    try:
        a, b = int(lo), int(hi)
    except ValueError:
        a = b = -1
    return check_range(a if sep else -1, b, text)


def check_range(lo: int, hi: int, shown=None, where: str = "--range") -> tuple[int, int]:
    """(lo, hi) if 0 <= lo < hi, else the one clear error (`shown`: how the user wrote it)."""
    if lo < 0 or hi <= lo:
        raise L2VError(f"rank range {shown if shown is not None else f'{lo}:{hi}'!r} is not LO:HI with "
                       "0 <= LO < HI", where=where,
                       fix="e.g. --range 10:100 (skip the 10 best candidates, look at ranks 10-99)")
    return lo, hi


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(n, start + size)


class _Embedder:
    """Encode a text list chunk by chunk through the cache; `rows(a, b)` gives unit rows a..b."""

    def __init__(self, cached, texts: list[str], instruction: str | None, chunk: int, keep: bool):
        self.cached, self.texts, self.instruction, self.chunk = cached, texts, instruction, chunk
        self.kept = {} if keep else None
        for a, b in _chunks(len(texts), chunk):  # first pass: fills the cache (or memory)
            emb = unit_rows(cached.encode(texts[a:b], instruction=instruction))
            if self.kept is not None:
                self.kept[a] = emb

    def rows(self, a: int, b: int) -> torch.Tensor:
        if self.kept is not None:
            return self.kept[a]
        return unit_rows(self.cached.encode(self.texts[a:b], instruction=self.instruction))


def _check_window(name: str, corpus: int, lo: int, hi: int, negatives: int) -> None:
    if corpus < 2:
        raise L2VError(f"data set '{name}': the corpus holds {corpus} text(s); mining needs at least 2",
                       where="--data/--corpus", fix="give more pairs, or a corpus with --corpus FILE")
    if lo >= corpus - 1:
        raise L2VError(f"--range starts at rank {lo}, beyond the {corpus - 1} candidates of data set "
                       f"'{name}' (its corpus less the positive)", where="--range",
                       fix=f"start the range below {corpus - 1}, e.g. --range 0:{corpus - 1}")
    if hi > corpus - 1:
        raise L2VError(f"--range asks for the top {hi} candidates, but data set '{name}' has only "
                       f"{corpus - 1} besides the positive", where="--range",
                       fix=f"end the range at {corpus - 1} or less, e.g. --range {lo}:{corpus - 1}")
    if negatives > hi - lo:
        raise L2VError(f"--negatives {negatives} is more than the {hi - lo} ranks of --range {lo}:{hi}",
                       where="--negatives", fix="widen --range or ask for fewer negatives")


def mine(model, data: str, out: str | Path, *, corpus: str | None = None, negatives: int = 1,
         rank_range: tuple[int, int] = (10, 100), max_score_ratio: float = 0.95, seed: int = 42,
         chunk_size: int = 4096, batch_size: int = 32, max_length: int = 512, pooling: str = "mean",
         dtype: str = "auto", max_samples: int | None = None, instructions=None, cache: bool = True,
         overwrite: bool = False, allow_causal: bool = False, show_progress: bool = False,
         echo=print) -> dict:
    """Mine hard negatives with MODEL (spec or loaded Encoder); write OUT; return the statistics."""
    from l2v_cli.config.schema import DataConfig, SupervisedConfig
    from l2v_cli.data.pairs import load_supervised
    from l2v_cli.data.text import load_texts
    from l2v_cli.eval.cache import CachedEncoder
    from l2v_cli.eval.runner import is_encoder, load_encoder
    from l2v_cli.modeling.bidir import is_bidirectional_config
    from l2v_cli.utils.atomic import atomic_dir

    lo, hi = rank_range
    if negatives < 1:
        raise L2VError(f"--negatives must be at least 1, got {negatives}", where="--negatives", fix="e.g. --negatives 1")
    if not 0 < max_score_ratio <= 1:
        raise L2VError(f"--max-score-ratio must be in (0, 1], got {max_score_ratio}", where="--max-score-ratio",
                       fix="e.g. 0.95: drop candidates scoring above 95% of the positive's score")
    out = Path(out)
    if out.exists() and not overwrite:
        raise L2VError(f"output folder exists: {out}", where=str(out), fix="choose another -o, or pass --overwrite")
    cfg = SupervisedConfig(data=DataConfig(path=data, max_samples=max_samples), instructions=instructions)
    sets = load_supervised(cfg, key="--data", require_negative=False)
    shared = None
    if corpus is not None:
        shared = list(dict.fromkeys(load_texts(DataConfig(path=corpus), key="--corpus")["text"]))
    for s in sets:  # every bad input before the model loads
        n = len(shared) if shared is not None else len(set(s.dataset["positive"]))
        _check_window(s.name, n, lo, hi, negatives)

    if is_encoder(model):
        enc = model
    else:
        enc = load_encoder(str(model), pooling=pooling, dtype=dtype, max_length=max_length)[0]
    config = getattr(enc._backbone, "config", None)
    if not allow_causal and not (config is not None and is_bidirectional_config(config)):
        raise L2VError(f"{getattr(enc, 'name', model)} is a causal (unconverted) model: its neighbours are not "
                       "those of the encoder you will train", where="MODEL",
                       fix="mine with a converted model (`l2v convert` / `l2v export` output), or pass --allow-causal")
    cached = CachedEncoder(enc, cache=cache, batch_size=batch_size, show_progress=show_progress)

    stats = {"model": str(getattr(enc, "name", model)), "settings": {
        "range": [lo, hi], "negatives": negatives, "max_score_ratio": max_score_ratio, "seed": seed,
        "corpus": "positives" if corpus is None else str(corpus), "chunk_size": chunk_size,
        "pooling": enc.pooling, "max_length": enc.max_length}, "sets": {}}
    written: dict[str, list[dict]] = {}
    for s in sets:
        t0 = time.perf_counter()
        rows = s.dataset.to_list()
        docs = shared if shared is not None else list(dict.fromkeys(r["positive"] for r in rows))
        where = {}
        for i, d in enumerate(docs):
            where.setdefault(d, []).append(i)
        queries = [r["query"] for r in rows]
        positives = list(dict.fromkeys(r["positive"] for r in rows))
        pos_index = {p: i for i, p in enumerate(positives)}
        echo(f"mine {s.name}: {len(queries):,} queries, corpus {len(docs):,} texts")
        keep = not cached.store
        q_emb = _Embedder(cached, queries, as_prefix(s.instruction), chunk_size, keep)
        d_emb = _Embedder(cached, docs, None, chunk_size, keep)
        p_emb = d_emb if shared is None else _Embedder(cached, positives, None, chunk_size, keep)
        t_enc = time.perf_counter() - t0

        k = min(hi + 1 + max(len(v) for v in where.values()), len(docs))  # room for the positive's copies
        t1 = time.perf_counter()
        top, pos_scores = TopK(len(queries), k), torch.empty(len(queries))
        pidx_all = torch.tensor([pos_index[r["positive"]] for r in rows])
        for qa, qb in _chunks(len(queries), chunk_size):
            q, pidx = q_emb.rows(qa, qb), pidx_all[qa:qb]
            for da, db in _chunks(len(docs), chunk_size):
                top.update(slice(qa, qb), q, da, d_emb.rows(da, db))
            for pa, pb in _chunks(len(positives), chunk_size):  # each query's own positive score
                sel = (pidx >= pa) & (pidx < pb)
                if sel.any():
                    pos_scores[qa:qb][sel] = (q[sel] * p_emb.rows(pa, pb)[pidx[sel] - pa]).sum(1)
        t_search = time.perf_counter() - t1

        out_rows, guarded, copies, fallback, dropped, neg_scores, top1 = [], 0, 0, 0, 0, [], []
        for i, r in enumerate(rows):
            rng = random.Random(f"{seed}:{s.name}:{i}")
            same = set(where.get(r["positive"], [])) | set(where.get(r["query"], []))
            ranked, scores = top.indices[i].tolist(), top.scores[i].tolist()
            ch = choose_negatives(ranked, scores, -1, float(pos_scores[i]), lo, hi, negatives,
                                  max_score_ratio, rng, same_text=same)
            guarded, copies = guarded + ch.guarded, copies + ch.same_text
            firsts = [sc for idx, sc in zip(ranked, scores) if idx >= 0 and idx not in same]
            if firsts:
                top1.append(firsts[0])
            if ch.negatives:
                score_of = dict(zip(ranked, scores))
                for idx in ch.negatives:
                    out_rows.append({"query": r["query"], "positive": r["positive"], "negative": docs[idx]})
                    neg_scores.append(score_of[idx])
            elif r.get("negative"):
                fallback += 1
                out_rows.append({"query": r["query"], "positive": r["positive"], "negative": r["negative"]})
            else:
                dropped += 1
        if not out_rows:
            raise L2VError(f"data set '{s.name}': no query kept a negative (all {len(rows)} guarded or out of "
                           "range)", where="--range/--max-score-ratio",
                           fix="widen --range or raise --max-score-ratio")
        written[s.name] = out_rows
        flops = 2.0 * len(queries) * len(docs) * enc.dim
        stats["sets"][s.name] = {
            "instruction": s.instruction, "queries": len(rows), "corpus": len(docs), "rows": len(out_rows),
            "mined": len(out_rows) - fallback, "kept_shipped_negative": fallback, "dropped_queries": dropped,
            "guarded": guarded, "positive_copies_skipped": copies,
            "mean_positive_score": round(float(pos_scores.mean()), 4),
            "mean_top1_other_score": round(float(np.mean(top1)), 4) if top1 else None,
            "mean_negative_score": round(float(np.mean(neg_scores)), 4) if neg_scores else None,
            "encode_s": round(t_enc, 2), "search_s": round(t_search, 2),
            "search_gflops": round(flops / max(t_search, 1e-9) / 1e9, 1),
            "encoded": cached.encoded, "cached": cached.cached}
        echo(f"mine {s.name}: {len(out_rows):,} rows ({fallback} kept the shipped negative, {dropped} dropped); "
             f"{guarded:,} candidates guarded as likely positives; positive {pos_scores.mean():.3f}, "
             f"negative {np.mean(neg_scores) if neg_scores else float('nan'):.3f} mean cosine")

    with atomic_dir(out, overwrite=overwrite) as tmp:
        for name, out_rows in written.items():
            with open(tmp / f"{name}.jsonl", "w", encoding="utf-8") as f:
                for row in out_rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
        (tmp / "instructions.json").write_text(json.dumps({s.name: s.instruction for s in sets}, indent=1,
                                                          ensure_ascii=False))
        (tmp / "mining.json").write_text(json.dumps(stats, indent=1, ensure_ascii=False))
    return stats
