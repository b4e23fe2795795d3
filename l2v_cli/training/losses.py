"""Contrastive loss (InfoNCE with in-batch and hard negatives) for SimCSE and supervised training.

    logits[i, c] = scale * cos(q_i, candidate_c)        loss = cross_entropy(logits, target_i)

Candidates are every row's positive, then every row's hard negatives (if any); with `gather=True`
and several ranks, those of ALL ranks (cross-device negatives, `l2v_cli.training.gather`). Row i's
target is its own positive: index `rank * B + i` of the candidate list. Each rank's loss is the
mean over its own B rows; see gather.py for why that plus DDP's gradient averaging equals the
single-process full-batch gradient.

  SimCSE (unsupervised): q and d are two forwards of the SAME texts with different dropout masks;
      no hard negatives; scale 20 (temperature 0.05) as in the LLM2Vec paper.
  Supervised (E5-style pairs + hard negatives): q = queries (with instruction), d = positives,
      negatives = hard negatives; scale 50 (temperature 0.02).

False negatives: a batch can hold the same document twice — e.g. row j's hard negative or row j's
positive is textually the row i's positive (llm2vec issue #178). Scoring it as a negative for row i
pushes the query away from its own answer. Pass `positive_ids` (and `negative_ids` with hard
negatives), text hashes from `text_ids`, and every candidate whose id equals row i's positive id
— other than row i's own target — is masked out (logit -inf). Ids are all-gathered like the
embeddings, so duplicates across ranks are masked too.

Matryoshka (`dims`, `weights`): the same loss on each prefix q[:, :m], candidates[:, :m] (each
normalised on its own), summed with the weights. Gathering, the candidate order, targets and the
false-negative mask are computed once and shared by every prefix, so the extra cost is a (B, C)
matrix per width — nothing next to the encoder's forward/backward, which runs once.

Everything is computed in float32 whatever the embeddings' dtype (bf16 logits at scale 50 lose
the differences the loss is about); the gradient still flows back in the input dtype.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch
import torch.nn.functional as F

from l2v_cli.training.gather import gather_no_grad, gather_with_grad, world_info

__all__ = ["info_nce", "text_ids", "stable_hash64", "false_negative_mask_from_ids", "SIMCSE_SCALE",
           "SUPERVISED_SCALE"]

SIMCSE_SCALE = 20.0       # 1 / 0.05, LLM2Vec SimCSE stage
SUPERVISED_SCALE = 50.0   # 1 / 0.02, LLM2Vec supervised stage


def stable_hash64(text: str, signed: bool = False) -> int:
    """First 8 bytes of BLAKE2b of the UTF-8 text as an integer: the same on every rank and run
    (unlike Python's `hash()`, which is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little", signed=signed)


def text_ids(texts: Sequence[str]) -> torch.Tensor:
    """Stable int64 id per text (`stable_hash64`). Equal texts get equal ids; unequal texts collide
    with probability ~n^2 / 2^64."""
    return torch.tensor([stable_hash64(t, signed=True) for t in texts], dtype=torch.int64)


def false_negative_mask_from_ids(positive_ids: torch.Tensor, candidate_ids: torch.Tensor,
                                 targets: torch.Tensor) -> torch.Tensor:
    """(B, C) bool: True where candidate c has the same text as row i's positive, except at the
    row's own target. `positive_ids` (B,), `candidate_ids` (C,), `targets` (B,) int64."""
    mask = positive_ids.view(-1, 1) == candidate_ids.view(1, -1)
    mask[torch.arange(mask.shape[0], device=mask.device), targets] = False
    return mask


def _check(name: str, t: torch.Tensor, rows: int | None, dim: int) -> None:
    if t.dim() != 2 or t.shape[1] != dim or (rows is not None and t.shape[0] != rows):
        want = f"({rows if rows is not None else 'M'}, {dim})"
        raise ValueError(f"info_nce: {name} has shape {tuple(t.shape)}, expected {want}")


def info_nce(q: torch.Tensor, d: torch.Tensor, scale: float,
             negatives: torch.Tensor | None = None,
             false_negative_mask: torch.Tensor | None = None,
             gather: bool = True, *,
             positive_ids: torch.Tensor | None = None,
             negative_ids: torch.Tensor | None = None,
             dims: Sequence[int] | None = None,
             weights: Sequence[float] | None = None) -> torch.Tensor:
    """InfoNCE over cosine similarities; returns a float32 scalar (mean over this rank's rows).

    q (B, D) queries; d (B, D) their positives; negatives (M, D) optional hard negatives (usually
    M = B, one per row; any M works). scale multiplies the cosines (1 / temperature).
    gather: score against the candidates of all ranks (no-op in a single process).
    positive_ids (B,) / negative_ids (M,): int64 text ids (`text_ids`) for false-negative masking;
        negative_ids is required when both positive_ids and negatives are given.
    false_negative_mask: optional (B, C) bool over the (gathered) candidate list
        [all positives, all negatives], True = exclude; OR-ed with the id-based mask. A row's own
        target is never excluded.
    dims / weights: Matryoshka widths (increasing, each <= D) and their loss weights (default 1
        each); None = the full width only, weight 1 (plain InfoNCE).
    """
    B, D = q.shape if q.dim() == 2 else (None, None)
    if B is None:
        raise ValueError(f"info_nce: q has shape {tuple(q.shape)}, expected (B, D)")
    _check("d", d, B, D)
    if negatives is not None:
        _check("negatives", negatives, None, D)
    if negative_ids is not None and negatives is None:
        raise ValueError("info_nce: negative_ids given without negatives")
    if positive_ids is not None and negatives is not None and negative_ids is None:
        raise ValueError("info_nce: false-negative masking with hard negatives needs negative_ids "
                         "too (the ids of every candidate)")

    dims, weights = _matryoshka(dims, weights, D)

    # Gathered un-normalised (float32): each prefix is normalised on its own below, and
    # normalising is per row, so after the gather it is the same as before it.
    qf = q.float()
    cands = [d.float()]
    if negatives is not None:
        cands.append(negatives.float())
    rank = 0
    if gather:
        rank, _ = world_info()
        cands = [gather_with_grad(c) for c in cands]
    cand = torch.cat(cands, dim=0)

    targets = rank * B + torch.arange(B, device=q.device)             # own positive, global index

    mask = None
    if positive_ids is not None:
        ids = [positive_ids.to(q.device)] + ([negative_ids.to(q.device)] if negatives is not None
                                            else [])
        if gather:
            ids = [gather_no_grad(i) for i in ids]
        mask = false_negative_mask_from_ids(positive_ids.to(q.device), torch.cat(ids), targets)
    if false_negative_mask is not None:
        if false_negative_mask.shape != (B, cand.shape[0]):
            raise ValueError(f"info_nce: false_negative_mask has shape "
                             f"{tuple(false_negative_mask.shape)}, expected {(B, cand.shape[0])}")
        extra = false_negative_mask.to(device=q.device, dtype=torch.bool).clone()
        extra[torch.arange(B, device=q.device), targets] = False
        mask = extra if mask is None else mask | extra
    loss = None
    for m, w in zip(dims, weights):
        logits = scale * (F.normalize(qf[:, :m], dim=-1) @ F.normalize(cand[:, :m], dim=-1).T)  # (B, C)
        if mask is not None:
            logits = logits.masked_fill(mask, float("-inf"))
        term = F.cross_entropy(logits, targets)
        term = term if w == 1 else w * term
        loss = term if loss is None else loss + term
    return loss


def _matryoshka(dims: Sequence[int] | None, weights: Sequence[float] | None,
                width: int) -> tuple[list[int], list[float]]:
    """(widths, weights) to sum over: [width], [1.0] without Matryoshka."""
    if dims is None:
        if weights is not None:
            raise ValueError("info_nce: weights given without dims")
        return [width], [1.0]
    dims = [int(m) for m in dims]
    if not dims or any(m < 1 or m > width for m in dims) or any(b <= a for a, b in zip(dims, dims[1:])):
        raise ValueError(f"info_nce: dims must be increasing widths in 1..{width}, got {dims}")
    weights = [1.0] * len(dims) if weights is None else [float(w) for w in weights]
    if len(weights) != len(dims):
        raise ValueError(f"info_nce: {len(weights)} weights for {len(dims)} dims")
    return dims, weights
