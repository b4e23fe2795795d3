"""How fast the hardware multiplies, and how many FLOPs a token of training costs: together they
say what fraction of the machine a stage used (the convert summary and `make bench`)."""

from __future__ import annotations

import time


def matmul_gflops(dtype: str = "float32", n: int = 1024, reps: int = 3) -> float:
    """GFLOP/s of an n³ matmul in `dtype` on the CPU (one warm-up, then `reps` timed)."""
    import torch

    from l2v_cli.utils.device import DTYPES

    x = torch.randn(n, n, dtype=DTYPES[dtype])
    x @ x
    t0 = time.perf_counter()
    for _ in range(reps):
        x @ x
    return round(reps * 2 * n**3 / (time.perf_counter() - t0) / 1e9, 2)


def forward_flops_per_token(arch, seq_len: int) -> float:
    """Matmul FLOPs of one token's forward pass through the decoder layers: 2 per weight, plus the
    attention scores and weighted sum over `seq_len` keys (the embedding lookup is free)."""
    from l2v_cli.planner import linears

    weights = sum(i * o for i, o in linears(arch).values())
    return arch.layers * (2 * weights + 4 * seq_len * arch.q_dim)


def lora_train_flops_per_token(arch, seq_len: int) -> float:
    """A LoRA step on a frozen base: forward + backward to the activations (no weight gradients
    for the frozen matrices), i.e. about twice the forward. LoRA's own matmuls are left out (<2 %)."""
    return 2 * forward_flops_per_token(arch, seq_len)
