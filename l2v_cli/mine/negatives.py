"""Choosing hard negatives from a ranked candidate list, with a guard against false negatives.

For one query, `ranked` is its retrieved corpus indices, best first. Then:

  1. the positive (and any candidate whose text equals the positive or the query) is removed;
  2. ranks are counted on what is left (0 = the best non-positive candidate) and only ranks in
     [lo, hi) are kept: the very top is skipped, where unlabelled positives crowd;
  3. the guard drops every candidate scoring above `max_score_ratio` x the positive's score: a
     document the model finds (almost) as similar as the labelled answer is more likely another
     answer than a negative;
  4. `n` of the survivors are sampled, seeded per query, and returned in rank order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Choice:
    negatives: list[int]
    guarded: int = 0           # candidates in the window dropped by the score guard
    same_text: int = 0         # candidates dropped as copies of the positive or the query
    window: list[int] = field(default_factory=list)


def choose_negatives(ranked: list[int], scores: list[float], positive: int, positive_score: float,
                     lo: int, hi: int, n: int, max_score_ratio: float, rng: random.Random,
                     same_text: set[int] = frozenset()) -> Choice:
    """Pick `n` negatives from `ranked` (corpus indices, best first) with their `scores`.

    `positive` is the positive's corpus index; `same_text` holds indices whose text equals the
    positive's or the query's (never negatives)."""
    kept, copies = [], 0
    for idx, s in zip(ranked, scores):
        if idx < 0 or idx == positive:
            continue
        if idx in same_text:
            copies += 1
            continue
        kept.append((idx, s))
    window = kept[lo:hi]
    limit = max_score_ratio * positive_score
    allowed = [idx for idx, s in window if s <= limit]
    picked = sorted(rng.sample(range(len(allowed)), min(n, len(allowed))))
    return Choice([allowed[i] for i in picked], guarded=len(window) - len(allowed), same_text=copies,
                  window=[idx for idx, _ in window])
