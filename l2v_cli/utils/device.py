"""Device and dtype choices: bf16 wherever the hardware runs it natively (AMX/AVX512-bf16 CPUs, Ampere+ GPUs)."""

from __future__ import annotations

import torch

from l2v_cli.utils.dtypes import canonical, to_torch



def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 matmul (AMX or AVX512-BF16), where bf16 is ~5x fp32."""
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
    """'auto' = bf16 where supported natively, else fp32; explicit names map directly."""
    if canonical(name, extra=("auto",)) != "auto":
        return to_torch(name)
    device = device or default_device()
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
