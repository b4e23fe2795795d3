"""The training order: a seeded shuffle of range(n) computed index by index, in constant memory.

Why not torch's RandomSampler (or accelerate's SeedableRandomSampler around it): each epoch it
builds `torch.randperm(n).tolist()`, a Python list of every row index on every rank — ~38 bytes a
row, 0.27 GB per rank for the 7 M blocks of a 2 GB MNTP corpus — so private memory grew with the
corpus. Here the i-th position of the order is `Permutation(n, seed, epoch)[i]`: a keyed Feistel
network over the next even power of two, cycle-walked back into [0, n). It holds a few integers.

Deterministic in (seed, epoch), so every rank computes the same order (accelerate then deals the
batches out to the ranks) and a resumed run (the Trainer skips the batches already consumed)
continues exactly where the uninterrupted one would.
"""

from __future__ import annotations

from typing import Iterator

from torch.utils.data import Sampler

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment: spreads consecutive round numbers apart
ROUNDS = 6  # 4 make a pseudo-random permutation (Luby–Rackoff); 2 more for small domains


def mix64(x: int) -> int:
    """splitmix64's finaliser: a bijection of 64-bit integers in which every output bit depends on
    every input bit (the Feistel round function and the key schedule)."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


class Permutation:
    """A bijection of range(n) chosen by (seed, epoch); `perm[i]` costs O(1) time and memory.

    A balanced Feistel network is a bijection of [0, 4^h) whatever its round function; with 4^h the
    smallest such power >= n (so < 4n), re-applying it until the value falls below n ("cycle
    walking") gives a bijection of [0, n) in fewer than 4 applications on average.
    """

    def __init__(self, n: int, seed: int, epoch: int = 0):
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self.n = n
        self.half = max(1, ((n - 1).bit_length() + 1) // 2)  # 4^half >= n
        self.low = (1 << self.half) - 1
        base = mix64((mix64(seed & MASK64) + epoch) & MASK64)
        self.keys = [mix64((base + (r + 1) * GOLDEN) & MASK64) for r in range(ROUNDS)]

    def __len__(self) -> int:
        return self.n

    def _feistel(self, x: int) -> int:
        left, right = x >> self.half, x & self.low
        for k in self.keys:
            left, right = right, left ^ (mix64(right ^ k) & self.low)
        return (left << self.half) | right

    def __getitem__(self, i: int) -> int:
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} outside range({self.n})")
        x = self._feistel(i)
        while x >= self.n:
            x = self._feistel(x)
        return x

    def __iter__(self) -> Iterator[int]:
        return map(self.__getitem__, range(self.n))


class ShuffleSampler(Sampler[int]):
    """The Trainer's sampler: every row once per epoch, in a new order each epoch, yielded lazily.

    `set_epoch` (called by accelerate's data loader and by `L2VTrainer` at each epoch's start)
    picks the order; the sampler never advances its own epoch, so iterating twice without it
    replays the same order (as a resumed run must)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        return iter(Permutation(self.n, self.seed, self.epoch))
