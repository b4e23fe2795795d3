"""Device and dtype choices: `auto` is bf16 on GPUs that run it natively (fp16 on older ones) and
fp32 on every CPU.

Why fp32 on CPUs, even with AMX: measured on this project's machines (docs/demo.md), bf16 matmul
is ~100x slower than fp32 on an AMD EPYC without AMX / AVX512-BF16, and on an Intel CPU with AMX,
where bf16 matmuls run ~5x faster, a whole MNTP step (attention, norms, LoRA, optimizer) still ran
2x slower under bf16 autocast (51 s vs 25 s for 4 x 128 tokens) — SDPA's forward + backward alone
2.2x slower. A micro-benchmark of one block did not predict the whole step (its ratio ranged
0.9-1.8 between runs), so `auto` does not guess from it: ask for bfloat16 explicitly to use it."""

from __future__ import annotations

import torch

from l2v_cli.utils.dtypes import canonical, to_torch



def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 matmul (AMX or AVX512-BF16). Reported by `l2v doctor`;
    `auto` still trains and encodes in fp32 on such CPUs (see the module doc)."""
    try:
        cap = torch.backends.cpu.get_cpu_capability()
    except Exception:
        return False
    if cap in ("AVX512", "AMX") or "AMX" in cap:
        flags = open("/proc/cpuinfo").read() if _exists("/proc/cpuinfo") else ""
        return "amx_bf16" in flags or "avx512_bf16" in flags
    return False


def _exists(path: str) -> bool:
    import os

    return os.path.exists(path)


def resolve_dtype(name: str = "auto", device: torch.device | None = None) -> torch.dtype:
    """'auto' = bf16 on a GPU that supports it (else fp16), fp32 on a CPU; explicit names map directly."""
    if canonical(name, extra=("auto",)) != "auto":
        return to_torch(name)
    device = device or default_device()
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32
