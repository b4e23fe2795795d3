"""Pooling: turn per-token hidden states into one vector per text. Pure torch, differentiable.

One place for every pooling method; encoding, training (SimCSE / supervised) and export all call
`pool(hidden, pool_mask, method)`.

`pool_mask` (B, L) marks the tokens that count for pooling: real tokens of the text, never padding
and never instruction tokens (the instruction is attended to but is not part of the embedding).
Which tokens those are is decided by whoever tokenises (see `l2v_cli.encoding.encoder`); here the
methods only look at the mask, so they are correct for left and right padding alike:

  mean           average of the pooled tokens' states.
  weighted_mean  position-weighted average (SGPT / LLM2Vec): the k-th pooled token (k = 1..n) gets
                 weight k / (1 + 2 + ... + n), so later tokens — which, in a causal model, have seen
                 more of the text — count more.
  last_token     the state of the last pooled token.
  eos            the state of the last pooled token, which the tokenising side guarantees is the
                 tokenizer's real EOS token appended to the text (so `pool` treats it like
                 last_token; the difference is in tokenisation).
  bos            the state of the first pooled token (the BOS when the text has no instruction).

Rows whose pool_mask is all zero give a zero vector (never NaN). States at masked positions are
never read arithmetically (`torch.where`, not multiplication), so NaN/inf in padded positions —
which some attention kernels produce for fully-masked query rows — cannot leak into the result.
The result is float32 whatever the hidden states' dtype.
"""

from __future__ import annotations

import torch

from l2v_cli.encoding.methods import POOLING_METHODS, check_pooling

__all__ = ["POOLING_METHODS", "pool", "mean_pool", "weighted_mean_pool", "last_token_pool",
           "first_token_pool", "pool_weights"]


def _as_bool(pool_mask: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    if pool_mask.shape != hidden.shape[:2]:
        raise ValueError(f"pool_mask shape {tuple(pool_mask.shape)} does not match hidden states "
                         f"{tuple(hidden.shape)} (expected (batch, seq_len))")
    return pool_mask.to(device=hidden.device).bool()


def _weighted_sum(hidden: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    h = torch.where(mask.unsqueeze(-1), hidden.float(), 0.0)
    return (h * weights.unsqueeze(-1)).sum(dim=1)


def pool_weights(pool_mask: torch.Tensor, method: str) -> torch.Tensor:
    """The (B, L) float32 weights `pool` applies to each token (rows sum to 1, or 0 if empty)."""
    check_pooling(method)
    m = pool_mask.bool()
    if method == "mean":
        w = m.float()
    elif method == "weighted_mean":
        w = torch.cumsum(m.long(), dim=1).float() * m.float()
    else:
        L = m.shape[1]
        pos = torch.arange(L, device=m.device).expand_as(m)
        if method == "bos":
            idx = torch.where(m, pos, L).min(dim=1).values
        else:  # last_token, eos
            idx = torch.where(m, pos, -1).max(dim=1).values
        w = (pos == idx.unsqueeze(1)).float() * m.float()
    return w / w.sum(dim=1, keepdim=True).clamp(min=1e-12)


def mean_pool(hidden: torch.Tensor, pool_mask: torch.Tensor) -> torch.Tensor:
    m = _as_bool(pool_mask, hidden)
    return _weighted_sum(hidden, pool_weights(m, "mean"), m)


def weighted_mean_pool(hidden: torch.Tensor, pool_mask: torch.Tensor) -> torch.Tensor:
    m = _as_bool(pool_mask, hidden)
    return _weighted_sum(hidden, pool_weights(m, "weighted_mean"), m)


def _index_pool(hidden: torch.Tensor, pool_mask: torch.Tensor, last: bool) -> torch.Tensor:
    m = _as_bool(pool_mask, hidden)
    B, L = m.shape
    pos = torch.arange(L, device=m.device).expand_as(m)
    if last:
        idx = torch.where(m, pos, -1).max(dim=1).values
    else:
        idx = torch.where(m, pos, L).min(dim=1).values
    has = m.any(dim=1)
    idx = idx.clamp(0, L - 1)
    out = hidden[torch.arange(B, device=hidden.device), idx].float()
    return torch.where(has.unsqueeze(-1), out, 0.0)


def last_token_pool(hidden: torch.Tensor, pool_mask: torch.Tensor) -> torch.Tensor:
    return _index_pool(hidden, pool_mask, last=True)


def first_token_pool(hidden: torch.Tensor, pool_mask: torch.Tensor) -> torch.Tensor:
    return _index_pool(hidden, pool_mask, last=False)


_POOLERS = {
    "mean": mean_pool,
    "weighted_mean": weighted_mean_pool,
    "last_token": last_token_pool,
    "eos": last_token_pool,
    "bos": first_token_pool,
}
assert set(_POOLERS) == set(POOLING_METHODS)


def pool(hidden: torch.Tensor, pool_mask: torch.Tensor, method: str = "mean") -> torch.Tensor:
    """Pool `hidden` (B, L, D) over `pool_mask` (B, L) with `method`; returns (B, D) float32."""
    return _POOLERS[check_pooling(method)](hidden, pool_mask)
