"""Embedding widths: the Matryoshka dims a model is trained with, and the prefix a user keeps.

A Matryoshka-trained encoder (Kusupati et al., 2022) is trained so that the first m numbers of
its pooled embedding, normalised, are an embedding in their own right, for each trained m. Here
every width is spelled the same way — in a recipe (`simcse.matryoshka.dims: [64, 128, full]`), on
the command line (`--dims 64,128,full`, `--dim 128`) and in the export's config — as increasing
positive integers, with `full` (the model's hidden size) allowed as the last one.

The widths a model was trained with are recorded in its config (`config.json` → `l2v` →
`matryoshka_dims`, written by `l2v export`) and, in a stage folder, in `stage.json`; a model
without a record was trained at its full width only. Asking for another width is allowed (every
prefix is a vector), with a one-line warning naming the trained ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence, Union

from l2v_cli.errors import L2VError

__all__ = ["FULL", "Dim", "parse_dims", "check_dims", "resolve_dims", "trained_dims_of", "untrained_warning"]

FULL = "full"
Dim = Union[int, str]  # an int > 0, or "full"


def parse_dims(spec: str | Sequence[Dim], where: str = "--dims") -> list[Dim]:
    """'64,128,full' (or a list) -> [64, 128, 'full'], checked by `check_dims`."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[Dim] = []
    for item in items:
        text = str(item).strip().lower()
        if text == FULL:
            out.append(FULL)
        elif text.lstrip("-").isdigit() and not isinstance(item, bool):
            out.append(int(text))
        else:
            raise L2VError(f"dim {str(item).strip()!r} is not a whole number or 'full'", where=where,
                           fix="give widths like 64,128,256,full")
    return check_dims(out, where)


def check_dims(dims: Sequence[Dim], where: str, hidden: int | None = None) -> list[Dim]:
    """Positive, strictly increasing, 'full' only last; each <= `hidden` when it is known."""
    dims = list(dims)
    if not dims:
        raise L2VError("no dims given", where=where, fix="give widths like 64,128,256,full")
    for i, d in enumerate(dims):
        if d == FULL:
            if i != len(dims) - 1:
                raise L2VError(f"'full' must be the last dim, got {_show(dims)}", where=where,
                               fix="list the widths in increasing order, full last")
            continue
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise L2VError(f"dim {d!r} must be a positive whole number or 'full'", where=where,
                           fix="give widths like 64,128,256,full")
        if hidden is not None and d > hidden:
            raise L2VError(f"dim {d} is larger than the model's hidden size {hidden}", where=where,
                           fix=f"use widths up to {hidden} (or 'full')")
    ints = [d for d in dims if d != FULL] + ([hidden] if FULL in dims and hidden is not None else [])
    if any(b <= a for a, b in zip(ints, ints[1:])):
        raise L2VError(f"dims must be strictly increasing, got {_show(dims)}"
                       + (f" (full = {hidden})" if FULL in dims and hidden is not None else ""), where=where,
                       fix=f"list each width once, smallest first, e.g. {_show(sorted(set(ints)))}")
    return dims


def resolve_dims(dims: Sequence[Dim], hidden: int, where: str) -> list[int]:
    """Checked dims with 'full' replaced by the hidden size."""
    return [hidden if d == FULL else int(d) for d in check_dims(dims, where, hidden)]


def trained_dims_of(path: str | Path | None) -> list[int] | None:
    """The Matryoshka dims recorded for a model folder (export config.json, or a stage's
    stage.json); None when nothing is recorded (trained at full width only)."""
    if path is None:
        return None
    p = Path(path)
    for f, get in ((p / "config.json", lambda d: (d.get("l2v") or {}).get("matryoshka_dims")),
                   (p / "stage.json", lambda d: (d.get("matryoshka") or {}).get("dims"))):
        try:
            found = get(json.loads(f.read_text()))
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(found, list) and found and all(isinstance(x, int) for x in found):
            return [int(x) for x in found]
    return None


def untrained_warning(dim: int, trained: Sequence[int] | None, hidden: int) -> str | None:
    """The one-line warning for a width the model was not trained with (None if it was)."""
    trained = list(trained) if trained else [hidden]
    if dim in trained:
        return None
    how = "Matryoshka dims " + ", ".join(map(str, trained)) if len(trained) > 1 else \
        f"its full width {trained[0]} only: no Matryoshka training"
    return (f"dim {dim} is not a width this model was trained with ({how}); "
            "the truncated vectors may lose more quality than a trained width")


def _show(dims: Sequence[Dim]) -> str:
    return "[" + ", ".join(map(str, dims)) + "]"
