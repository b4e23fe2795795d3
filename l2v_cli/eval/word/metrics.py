"""Word-level scores: accuracy, and entity-level micro F1 over IOB2 spans (the CoNLL measure)."""

from __future__ import annotations


def spans(tags: list[str]) -> set[tuple[str, int, int]]:
    """Entities (type, start, end-exclusive) of one IOB2 sentence. As conlleval does, an I-X that
    does not continue an X entity starts one, so ill-formed predictions are still scored."""
    out, start, kind = set(), None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, typ = tag.partition("-")
        continues = prefix == "I" and kind == typ
        if start is not None and not continues:
            out.add((kind, start, i))
            start, kind = None, None
        if prefix in ("B", "I") and not continues:
            start, kind = i, typ
    return out


def entity_f1(gold: list[list[str]], pred: list[list[str]]) -> dict[str, float]:
    """Micro precision / recall / F1 (×100) of exact entity matches over all sentences."""
    tp = n_gold = n_pred = 0
    for g, p in zip(gold, pred):
        gs, ps = spans(g), spans(p)
        tp += len(gs & ps)
        n_gold += len(gs)
        n_pred += len(ps)
    prec = tp / n_pred if n_pred else 0.0
    rec = tp / n_gold if n_gold else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {"f1": 100 * f1, "precision": 100 * prec, "recall": 100 * rec}


def accuracy(gold: list[list[str]], pred: list[list[str]]) -> float:
    pairs = [(a, b) for g, p in zip(gold, pred) for a, b in zip(g, p)]
    return 100 * sum(a == b for a, b in pairs) / max(len(pairs), 1)
