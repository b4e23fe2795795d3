"""How fast the hardware multiplies, and how many FLOPs a token of training costs: together they
say what fraction of the machine a stage used (the convert summary and `make bench`)."""

from __future__ import annotations

import time


def matmul_gflops(dtype="float32", n: int | None = None, repeats: int = 3, device=None) -> float:
    """GFLOP/s of an n³ matmul in `dtype` (name or torch dtype): best of `repeats`, on `device`
    (default: the GPU where there is one, else the CPU); n defaults to 4096 on a GPU, 1024 on a CPU."""
    import torch

    from l2v_cli.utils.device import default_device
    from l2v_cli.utils.dtypes import to_torch

    dev = torch.device(device) if device is not None else default_device()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    n = n or (4096 if dev.type == "cuda" else 1024)
    dt = to_torch(dtype) if isinstance(dtype, str) else dtype
    a, b = torch.randn(n, n, device=dev).to(dt), torch.randn(n, n, device=dev).to(dt)
    torch.mm(a, b)
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync()
        best = min(best, time.perf_counter() - t0)
    return round(2 * n**3 / best / 1e9, 2)


def forward_flops_per_token(arch, seq_len: int) -> float:
    """Matmul FLOPs of one token's forward pass through the decoder layers: 2 per weight, plus the
    attention scores and weighted sum over `seq_len` keys (the embedding lookup is free)."""
    from l2v_cli.modeling.arch import linears

    weights = sum(i * o for i, o in linears(arch).values())
    return arch.layers * (2 * weights + 4 * seq_len * arch.q_dim)


def lora_train_flops_per_token(arch, seq_len: int) -> float:
    """A LoRA step on a frozen base: the forward, then the backward to the activations — once more
    each frozen linear (no weight gradients), twice each attention product (both its operands need
    gradients). LoRA's own matmuls are left out (< 2 % at r 16); checked against torch's FlopCounter."""
    from l2v_cli.modeling.arch import linears

    weights = sum(i * o for i, o in linears(arch).values())
    return arch.layers * (2 * 2 * weights + 3 * 4 * seq_len * arch.q_dim)
