"""Frozen word features: run the model once over every sentence, map sub-word tokens to words.

A sentence is its words joined by single spaces; the fast tokenizer's character offsets say which
tokens make up each word. A word's feature is the hidden state of its first sub-token, or the mean
over its sub-tokens (`subword`). Two label positions are taken in the same pass:

  same_token   the word's own token(s)
  next_token   the token(s) one step earlier: a model trained with (masked) next-token
               prediction stores what comes next at position i-1 (the paper's "retroactive"
               reading). The first word of a sentence with nothing before it (no BOS) falls back
               to its own position; `fallbacks` counts those words.

Features are cached per model fingerprint, settings and sentences (`$L2V_CACHE/word-features/`).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from l2v_cli.errors import L2VError

POSITIONS = ("same_token", "next_token")


def align(tokenizer, words: list[str]) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of " ".join(words) and, per word, its (first, last) token index (inclusive)."""
    text = " ".join(words)
    starts, pos = [], 0
    for w in words:
        starts.append(pos)
        pos += len(w) + 1
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    spans, t = [], 0
    for w, ws in zip(words, starts):
        we = ws + len(w)
        while t < len(offsets) and offsets[t][1] <= ws:  # tokens that end before this word
            t += 1
        first = t
        while t < len(offsets) and offsets[t][0] < we:  # tokens that overlap it
            t += 1
        if first == t:  # (cannot happen with offsets that cover the text) keep the previous token
            first = t = max(first - 1, 0)
            t += 1
        spans.append((first, t - 1))
        if offsets[t - 1][1] > we:  # a token running into the next word also belongs to it
            t -= 1
    return ids, spans


def _check_fast(tokenizer) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise L2VError("word-level evaluation needs a fast tokenizer (character offsets), and this model's "
                       "tokenizer is a slow one", where="MODEL",
                       fix="use a model folder with tokenizer.json")


def _gather(h: torch.Tensor, spans: list[tuple[int, int]], shift: int, subword: str) -> tuple[torch.Tensor, int]:
    """(words, D) features from one sentence's states `h` (L, D); positions shifted by `shift`."""
    rows, fallbacks = [], 0
    for first, last in spans:
        a, b = first + shift, last + shift
        if a < 0:  # nothing precedes the first word
            a, b, fallbacks = first, last, fallbacks + 1
        rows.append(h[a] if subword == "first" else h[a:b + 1].mean(0))
    return torch.stack(rows), fallbacks


def extract(encoder, sentences: list[list[str]], *, layer: int = -1, subword: str = "first",
            batch_size: int = 32, show_progress: bool = False) -> tuple[dict[str, np.ndarray], dict]:
    """{position: (total words, D) float32} for all sentences in order, and stats."""
    from l2v_cli.encoding.encoder import Tokenized

    if subword not in ("first", "mean"):
        raise L2VError(f"unknown sub-word pooling {subword!r}", where="--subword", fix="use first or mean")
    _check_fast(encoder.tokenizer)
    t0 = time.perf_counter()
    n_layers = encoder._backbone.config.num_hidden_layers
    if not -n_layers - 1 <= layer <= n_layers:
        raise L2VError(f"layer {layer} does not exist: the model has {n_layers} layers", where="--layer",
                       fix=f"use -1 (last) … {n_layers}, or 0 for the embeddings")
    pre, suf = encoder.prefix, encoder.suffix
    items = []
    for words in sentences:
        ids, spans = align(encoder.tokenizer, words)
        items.append((Tokenized(pre + ids + suf, 0), [(f + len(pre), l + len(pre)) for f, l in spans]))
    order = sorted(range(len(items)), key=lambda i: -len(items[i][0]))
    per_sentence: list = [None] * len(items)
    fallbacks = n_tokens = 0
    progress = None
    if show_progress:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        progress = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), console=Console(stderr=True), transient=True)
        task = progress.add_task("word features", total=len(items))
        progress.start()
    model = encoder.model
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for s in range(0, len(order), batch_size):
                idx = order[s:s + batch_size]
                batch = encoder.collate([items[i][0] for i in idx], encoder.device)
                h = encoder.hidden_states(batch, layer=layer).float()
                n_tokens += int(batch["attention_mask"].sum())
                for row, i in enumerate(idx):
                    off = 0 if encoder.padding_side == "right" else h.shape[1] - len(items[i][0])
                    hs = h[row, off:off + len(items[i][0])]
                    same, _ = _gather(hs, items[i][1], 0, subword)
                    nxt, fb = _gather(hs, items[i][1], -1, subword)
                    fallbacks += fb
                    per_sentence[i] = (same.cpu().numpy(), nxt.cpu().numpy())
                if progress is not None:
                    progress.advance(task, len(idx))
    finally:
        model.train(was_training)
        if progress is not None:
            progress.stop()
    feats = {"same_token": np.concatenate([p[0] for p in per_sentence]),
             "next_token": np.concatenate([p[1] for p in per_sentence])}
    return feats, {"sentences": len(items), "tokens": n_tokens, "fallbacks": fallbacks,
                   "seconds": round(time.perf_counter() - t0, 2)}


def cached_extract(encoder, sentences: list[list[str]], *, layer: int, subword: str, batch_size: int,
                   cache: bool = True, show_progress: bool = False) -> tuple[dict[str, np.ndarray], dict]:
    """`extract` through the on-disk cache (a hit runs no model at all)."""
    from l2v_cli.eval.cache import EmbeddingCache, encoder_settings
    from l2v_cli.modeling.aliases import cache_root

    settings = {**encoder_settings(encoder), "layer": layer, "subword": subword, "kind": "word-features"}
    store = EmbeddingCache(cache_root() / "word-features") if cache and settings["model"] else None
    n = sum(len(s) for s in sentences)
    texts = ["\x1f".join(s) for s in sentences]  # unit separator: words, not just text, define the key
    if store is not None:
        keys = {p: store.key(settings, p, texts) for p in POSITIONS}
        hits = {p: store.get(keys[p], settings["model"], n) for p in POSITIONS}
        if all(v is not None for v in hits.values()):
            return hits, {"sentences": len(sentences), "cached": True, "seconds": 0.0}
    feats, stats = extract(encoder, sentences, layer=layer, subword=subword, batch_size=batch_size,
                           show_progress=show_progress)
    if store is not None:
        for p in POSITIONS:
            store.put(keys[p], settings["model"], feats[p])
    return feats, {**stats, "cached": False}
