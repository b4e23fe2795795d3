"""Text encoding: pooling of hidden states and the `Encoder` (the Python API behind `l2v encode`).

    from l2v_cli.encoding import Encoder
    enc = Encoder.from_pretrained("path/to/model", pooling="mean")
    emb = enc.encode(["a sentence", "another"], normalize=True)   # np.ndarray float32 (2, D)

This package module stays light (no torch import) so the CLI can validate options before loading
anything heavy; `Encoder` and `pool` are imported on first use.
"""

from __future__ import annotations

# The one list of pooling methods (validated by the CLI before torch is imported).
POOLING_METHODS: tuple[str, ...] = ("mean", "weighted_mean", "last_token", "eos", "bos")

__all__ = ["POOLING_METHODS", "Encoder", "pool", "check_pooling", "as_prefix"]


def as_prefix(instruction: str | None) -> str | None:
    """'Do X' -> 'Do X: ', the instruction as the Encoder's prefix (attended to, not pooled): the
    one spelling used by evaluation, supervised training and mining."""
    if not instruction:
        return None
    return instruction.strip().rstrip(".:").rstrip() + ": "


def check_pooling(method: str) -> str:
    """Return `method` if it is a known pooling method, else raise a one-line L2VError with a suggestion."""
    if method not in POOLING_METHODS:
        from l2v_cli.errors import L2VError, did_you_mean

        raise L2VError(f"unknown pooling method {method!r}", where="--pooling",
                       fix=did_you_mean(method, POOLING_METHODS))
    return method


def __getattr__(name: str):
    if name == "Encoder":
        from l2v_cli.encoding.encoder import Encoder

        return Encoder
    if name == "pool":
        from l2v_cli.encoding.pooling import pool

        return pool
    raise AttributeError(f"module 'l2v_cli.encoding' has no attribute {name!r}")
