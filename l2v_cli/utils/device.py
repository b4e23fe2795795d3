"""Device and dtype choices: bf16 wherever the hardware runs it natively (AMX/AVX512-bf16 CPUs, Ampere+ GPUs)."""

from __future__ import annotations

import functools

import torch

from l2v_cli.utils.dtypes import canonical, to_torch



def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def cpu_has_fast_bf16() -> bool:
    """True when this CPU runs a transformer block's forward + backward faster in bf16 than in fp32.

    Native bf16 (AMX / AVX512-BF16) is necessary but not sufficient: on one AMX machine bf16 matmuls
    ran ~5x faster, yet attention's forward + backward ran 2.2x slower and a whole MNTP step 2x
    slower than fp32. So with the flag present, a small block (two linears + SDPA, fwd + bwd) is
    timed in both dtypes, once per process (~0.5 s), and bf16 must win by 20%."""
    try:
        cap = torch.backends.cpu.get_cpu_capability()
    except Exception:
        return False
    if cap in ("AVX512", "AMX") or "AMX" in cap:
        flags = open("/proc/cpuinfo").read() if _exists("/proc/cpuinfo") else ""
        if "amx_bf16" in flags or "avx512_bf16" in flags:
            return _bf16_block_speedup() >= 1.2
    return False


@functools.lru_cache(maxsize=1)
def _bf16_block_speedup() -> float:
    """fp32 time / bf16-autocast time of a small transformer block's forward + backward (best of 3)."""
    import time

    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 64, 256, generator=g)
    w1, w2 = (torch.randn(256, 1024, generator=g) * 0.05).requires_grad_(), (torch.randn(1024, 256, generator=g) * 0.05).requires_grad_()

    def step():
        h = torch.nn.functional.gelu(x @ w1) @ w2
        q = h.view(8, 64, 4, 64).transpose(1, 2)
        torch.nn.functional.scaled_dot_product_attention(q, q, q).float().sum().backward()

    def best(bf16: bool) -> float:
        times = []
        for _ in range(4):
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                step()
            times.append(time.perf_counter() - t)
        return min(times[1:])  # the first run warms up

    return best(False) / best(True)


def _exists(path: str) -> bool:
    import os

    return os.path.exists(path)


def resolve_dtype(name: str = "auto", device: torch.device | None = None) -> torch.dtype:
    """'auto' = bf16 where supported natively, else fp32; explicit names map directly."""
    if canonical(name, extra=("auto",)) != "auto":
        return to_torch(name)
    device = device or default_device()
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
