"""One strict JSONL parser for every reader of user files (training text and triplets, encode input,
eval data): one JSON object per non-blank line; errors name file:line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

from l2v_cli.errors import L2VError


_TYPE_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


def _want(types: tuple[type, ...]) -> str:
    """(int, float) -> 'a number', (str, int) -> 'a string or integer', (str,) -> 'a string'."""
    if set(types) >= {int, float}:
        names = ["number"] + [_TYPE_NAMES[t] for t in types if t not in (int, float)]
    else:
        names = [_TYPE_NAMES.get(t, t.__name__) for t in types]
    names = [n for n in names if n != "NoneType"] or ["null"]
    return "a " + " or ".join(names)


def _json_type(v) -> str:
    return {str: "string", int: "number", float: "number", bool: "boolean", list: "array", dict: "object",
            type(None): "null"}.get(type(v), type(v).__name__)


def iter_jsonl(lines: Iterable[str], path: Path, fix: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; a line that is not a JSON object is an
    L2VError naming file:line, with `fix`."""
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise L2VError(f"line {n} is not valid JSON: {e.msg} at column {e.colno}", where=f"{path}:{n}",
                           fix=fix) from None
        if not isinstance(obj, dict):
            raise L2VError(f"line {n} is a JSON {_json_type(obj)}, not an object", where=f"{path}:{n}", fix=fix)
        yield n, obj


def parse_jsonl(lines: list[str], path: Path, keys: dict[str, tuple[type, ...]],
                optional: dict[str, tuple[type, ...]] | None = None) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line; every key in `keys` present with one of its
    types, `optional` keys typed when present. Errors name file:line and the key."""
    rows, optional = [], optional or {}
    for n, obj in iter_jsonl(lines, path, f"one JSON object per line with keys {', '.join(keys)}"):
        for k, types in {**keys, **optional}.items():
            if k not in obj:
                if k in optional:
                    continue
                raise L2VError(f"line {n} has no {k!r} key (has {', '.join(map(repr, list(obj)[:6])) or 'none'})",
                               where=f"{path}:{n}", fix=f"each line needs the keys {', '.join(map(repr, keys))}")
            v = obj[k]
            if not isinstance(v, types) or isinstance(v, bool) and bool not in types:
                raise L2VError(f"line {n}: {k!r} is a JSON {_json_type(v)}, not {_want(types)}",
                               where=f"{path}:{n}", fix=f"make {k!r} {_want(types)}")
        rows.append((n, obj))
    return rows
