"""Byte sizes written by people: "5GB", "500MB", "24GiB", "80 GB" — one parser for every option."""

from __future__ import annotations

import re

_POWERS = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}
_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?)(B?)\s*")


def parse_size(text: str | int, *, gb_is_gib: bool = False, bare_unit: str = "") -> int:
    """Bytes in `text`. KB/MB/GB/TB are decimal (as transformers reads `max_shard_size`) unless
    `gb_is_gib` (GPU memory: an "80GB" card has 80 GiB); KiB/MiB/GiB/TiB are binary. A bare number
    is in `bare_unit` ("" = bytes, "G" = GiB with `gb_is_gib`). ValueError for anything else or <= 0."""
    if isinstance(text, int) and not isinstance(text, bool):
        n = text
    else:
        m = _SIZE.fullmatch(str(text).upper())
        if not m or (m.group(3) and not m.group(2)):
            raise ValueError(f"not a size: {text!r}")
        unit = m.group(2) or ("" if m.group(4) else bare_unit)
        base = 1024 if (m.group(3) or gb_is_gib) else 1000
        n = int(float(m.group(1)) * base ** _POWERS[unit])
    if n <= 0:
        raise ValueError(f"a size must be positive, got {text!r}")
    return n
