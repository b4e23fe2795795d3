"""The one dtype table: names, their short aliases and bytes per element (no torch import here).

    canonical("bf16") -> "bfloat16";  dtype_bytes("float16") -> 2;  to_torch("fp32") -> torch.float32
"""

from __future__ import annotations

from l2v_cli.errors import L2VError, did_you_mean

# name -> (short alias, bytes per element)
DTYPES: dict[str, tuple[str, int]] = {
    "float32": ("fp32", 4),
    "bfloat16": ("bf16", 2),
    "float16": ("fp16", 2),
}
NAMES: tuple[str, ...] = tuple(DTYPES)
ALIASES: dict[str, str] = {short: name for name, (short, _) in DTYPES.items()}


def canonical(name: str, *, extra: tuple[str, ...] = (), where: str = "--dtype") -> str:
    """The full name of dtype `name` (short aliases accepted); `extra` are other accepted words
    (e.g. "auto", "original"); a one-line L2VError for anything else."""
    name = ALIASES.get(name, name)
    if name in DTYPES or name in extra:
        return name
    raise L2VError(f"unknown dtype {name!r}", where=where, fix=did_you_mean(name, (*extra, *NAMES)))


def dtype_bytes(name: str) -> int:
    return DTYPES[canonical(name)][1]


def to_torch(name: str):
    """The torch dtype of `name` (imports torch)."""
    import torch

    return getattr(torch, canonical(name))
