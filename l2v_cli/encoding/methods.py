"""The pooling methods by name: the one list, checked before torch is imported (no torch here)."""

from __future__ import annotations

POOLING_METHODS: tuple[str, ...] = ("mean", "weighted_mean", "last_token", "eos", "bos")


def check_pooling(method: str) -> str:
    """Return `method` if it is a known pooling method, else raise a one-line L2VError with a suggestion."""
    if method not in POOLING_METHODS:
        from l2v_cli.errors import L2VError, did_you_mean

        raise L2VError(f"unknown pooling method {method!r}", where="--pooling",
                       fix=did_you_mean(method, POOLING_METHODS))
    return method
