"""Assemble a run plan: every training stage of a recipe on a setup (GPUs, nodes, ZeRO stage, dtype,
device memory), with warnings and the way out when a stage does not fit.

    plan = make_plan("mistral-7b", load_recipe("unsup"), gpus=8, deepspeed="zero2")
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from l2v_cli.errors import L2VError, did_you_mean
from l2v_cli.modeling.arch import Arch, count_params, lora_params, resolve_arch
from l2v_cli.planner.memory import (GIB, Precision, Shape, activation_bytes, backward_peak, lora_state_bytes,
                                    masked_tokens, runtime_bytes, step_peak)
from l2v_cli.stages import registry
from l2v_cli.utils.dtypes import dtype_bytes
from l2v_cli.utils.sizes import parse_size

DEFAULT_GPU_MEMORY = 80 * GIB
ZERO_STAGES = {None: 0, "none": 0, "zero2": 2, "zero3": 3}


@dataclass
class Setup:
    gpus: int = 1
    nodes: int = 1
    zero: int = 0  # 0 (DDP / single process), 2 or 3
    dtype: str = "bfloat16"
    device: str = "cuda"
    gpu_memory: int = DEFAULT_GPU_MEMORY
    launcher: str = "none"

    @property
    def world(self) -> int:
        return self.gpus * self.nodes


@dataclass
class StagePlan:
    stage: str
    shape: Shape
    grad_accum: int
    params: dict
    trainable: int
    memory: dict  # what adds up to `total`: weights, lora_weights, optimizer, step_peak, runtime rows
    detail: dict  # the parts of step_peak and the alternatives (with / without checkpointing)
    total: int
    gpu_memory: int
    tokens_per_step: int
    examples_per_step: int
    kernel: str
    warnings: list = field(default_factory=list)
    max_batch: Optional[int] = None

    @property
    def title(self) -> str:
        return registry.get(self.stage).title

    @property
    def fits(self) -> bool:
        return self.total <= self.gpu_memory

    def to_dict(self) -> dict:
        sh = self.shape
        return {
            "stage": self.stage, "title": self.title,
            "per_device_batch_size": sh.batch, "max_seq_length": sh.seq,
            "gradient_accumulation_steps": self.grad_accum,
            "gradient_checkpointing": sh.gradient_checkpointing,
            "forward_passes": sh.passes, "grad_cache_chunk_size": sh.grad_cache_chunk,
            "lora": {"r": sh.lora_r, "target_modules": list(sh.targets), "dropout": sh.lora_dropout},
            "attention_kernel": self.kernel,
            "params": self.params, "trainable_params": self.trainable,
            "memory_bytes": self.memory, "detail_bytes": self.detail,
            "total_bytes": self.total, "total_gib": round(self.total / GIB, 2),
            "gpu_memory_bytes": self.gpu_memory, "fits": self.fits,
            "max_per_device_batch_size": self.max_batch,
            "tokens_per_step": self.tokens_per_step, "examples_per_step": self.examples_per_step,
            "warnings": self.warnings,
        }


def plan_stage(arch: Arch, shape: Shape, grad_accum: int, setup: Setup, *, check: bool = True) -> StagePlan:
    """Parameters, per-device memory and tokens of one stage; warnings when it does not fit."""
    params = count_params(arch)
    wbytes = dtype_bytes(setup.dtype)
    prec = Precision.of(wbytes, setup.device, deepspeed=bool(setup.zero))
    n = lora_params(arch, shape.lora_r, list(shape.targets))
    weights = params["total"] * wbytes
    if setup.zero >= 3:
        weights = -(-weights // setup.world)
    states = lora_state_bytes(n, setup)
    act = activation_bytes(arch, shape, prec)
    peak = step_peak(act, states["lora_grads"])
    mem = {"weights": weights, "lora_weights": states["lora_weights"], "optimizer": states["optimizer"],
           "step_peak": peak, **runtime_bytes(arch, n, setup, wbytes)}
    detail = {
        "lora_grads": states["lora_grads"], "activations_kept": act["kept"],
        "recomputed_layer": act["recompute"], "loss": act["loss"],
        "forward_extra": act["fwd_extra"], "backward_extra": act["bwd_extra"],
        "forward_end_peak": act["kept"] + act["loss"] + act["fwd_extra"],
        "backward_peak": backward_peak(act, states["lora_grads"]),
        "per_layer": act["per_layer"],
        "activations_with_checkpointing": activation_bytes(arch, shape, prec, checkpointing=True)["activations"],
        "activations_without_checkpointing": activation_bytes(arch, shape, prec, checkpointing=False)["activations"],
    }
    if shape.contrastive:
        detail["candidates_per_query"] = shape.candidates()
    else:
        detail["masked_tokens"] = masked_tokens(shape)
    sp = StagePlan(
        stage=shape.stage, shape=shape, grad_accum=grad_accum, params=params, trainable=n, memory=mem,
        detail=detail, total=sum(mem.values()), gpu_memory=setup.gpu_memory,
        tokens_per_step=shape.batch * shape.seq * grad_accum * setup.world,
        examples_per_step=shape.batch * grad_accum * setup.world, kernel=act["kernel"],
    )
    if check:
        _check(sp, arch, setup)
    return sp


def _check(sp: StagePlan, arch: Arch, setup: Setup) -> None:
    """Warnings: too big for the device (with the way out), settings the trainer refuses."""
    sh = sp.shape
    sec = registry.get(sh.stage).section
    if sh.grad_cache_chunk and setup.zero and sh.contrastive:
        sp.warnings.append(f"{sec}.grad_cache_chunk_size is not supported under DeepSpeed (the trainer refuses "
                           "it): use --launcher torchrun, or grad_cache_chunk_size=0")
    sp.max_batch = _max_batch(arch, sh, sp.grad_accum, setup)
    if sp.fits:
        return
    fixes = []
    if sp.max_batch:
        # the same examples per step: a divisor of batch x accumulation if one is close enough
        want = sh.batch * sp.grad_accum
        b = next((d for d in range(sp.max_batch, 0, -1) if want % d == 0), 1)
        b = b if 2 * b >= sp.max_batch else sp.max_batch
        fix = (f"{sec}.train.per_device_batch_size={b} "
               f"{sec}.train.gradient_accumulation_steps={-(-want // b)}")
        if sh.contrastive:
            fix += " (fewer in-batch negatives)"
        fixes.append(fix)
    if not sh.gradient_checkpointing:
        fixes.append(f"{sec}.train.gradient_checkpointing=true")
    if sh.contrastive and not sh.grad_cache_chunk and not setup.zero:
        fixes.append(f"{sec}.grad_cache_chunk_size=8 (keeps every negative)")
    if setup.zero < 3 and sp.memory["weights"] > 0.25 * sp.gpu_memory:
        fixes.append("--deepspeed zero3")
    head = f"does not fit: {sp.total / GIB:.1f} GiB > {sp.gpu_memory / GIB:.0f} GiB per device"
    if not fixes:
        fixes.append("more GPUs with --deepspeed zero3, or a smaller model")
    sp.warnings.append(head + " — try " + "; or ".join(fixes))


def _max_batch(arch: Arch, shape: Shape, grad_accum: int, setup: Setup) -> Optional[int]:
    """The largest per-device batch size that fits (None if even 1 does not)."""
    def fits(b: int) -> bool:
        return plan_stage(arch, dataclasses.replace(shape, batch=b), grad_accum, setup, check=False).fits

    if not fits(1):
        return None
    lo, hi = 1, 2
    while fits(hi):
        lo, hi = hi, hi * 2
        if hi > 1 << 20:
            return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def shape_from_recipe(recipe, stage: str, setup: Setup, attn_implementation: str = "sdpa") -> tuple[Shape, int]:
    """The planner's shape of a stage of a resolved recipe (family values filled in); `attn_implementation`
    is the kernel `auto` starts with."""
    sec = getattr(recipe, registry.get(stage).section)
    tr = sec.train
    return Shape(
        stage=stage, batch=tr.per_device_batch_size, seq=sec.max_seq_length, lora_r=sec.lora.r,
        targets=tuple(sec.lora.target_modules), lora_dropout=sec.lora.dropout,
        attention_dropout=getattr(sec, "attention_dropout", 0.0),
        gradient_checkpointing=tr.gradient_checkpointing,
        mask_probability=getattr(sec, "mask_probability", 0.2),
        grad_cache_chunk=getattr(sec, "grad_cache_chunk_size", 0),
        world=setup.world, gather=getattr(sec, "gather_across_processes", True),
        attn_implementation=(attn_implementation if recipe.bidir.attn_implementation == "auto"
                             else recipe.bidir.attn_implementation),
    ), tr.gradient_accumulation_steps


@dataclass
class Plan:
    model: str
    arch: Arch
    recipe: str
    setup: Setup
    stages: list[StagePlan]
    alias: Any = None

    @property
    def fits(self) -> bool:
        return all(sp.fits for sp in self.stages)

    def to_dict(self) -> dict:
        s = self.setup
        return {
            "model": self.model, "recipe": self.recipe,
            "architecture": self.arch.to_dict(),
            "params": count_params(self.arch),
            "setup": {"gpus": s.gpus, "nodes": s.nodes, "world_size": s.world,
                      "deepspeed": {0: None, 2: "zero2", 3: "zero3"}[s.zero], "dtype": s.dtype,
                      "device": s.device, "gpu_memory_bytes": s.gpu_memory},
            "stages": [sp.to_dict() for sp in self.stages],
            "fits": self.fits,
            "formulas": FORMULAS,
        }


FORMULAS = {
    "weights": "params x dtype bytes (ZeRO-3: / world size)",
    "lora_params": "sum over layers and targeted linears of r x (in + out)",
    "lora_states": "LoRA params x 16 bytes: DeepSpeed 2 (16-bit copy) + 2 (grads) + 12 (fp32 master, Adam m, v); "
                   "DDP 4 + 4 + 8. ZeRO-2 shards grads + optimizer, ZeRO-3 also the params",
    "per_layer": "norm inputs 4*T*h each (fp32 RMSNorm) + per LoRA linear (mask + e)*T*in + e*T*r "
                 "+ attention e*T*(2*q_dim + 2*kv_dim) + 4*b*heads*s [eager: + (4 + mask + e)*b*heads*s^2] "
                 "+ MLP 3*e*T*ffn; T = batch*seq, e = activation bytes, mask = 1 on CUDA",
    "activations": "no checkpointing: layers * per_layer; checkpointing: layers * e*T*h + one layer recomputed; "
                   "x forward passes (SimCSE 2, supervised 3; GradCache: one chunk)",
    "loss": "MNTP 4 * mask_prob * batch * (seq-1) * vocab (masked positions only); "
            "contrastive 4 * batch * candidates, candidates = batch * world (x2 with hard negatives)",
    "step_peak": "max(forward end: kept + loss + (e+4)*masked*vocab [+ hidden-states tuple], "
                 "backward: (passes-1)/passes*kept + max(kept/passes, LoRA grads) + recomputed layer "
                 "+ 2*e*T*(h+ffn) [+ passes*e*T*h])",
    "total": "weights + LoRA weights + optimizer + step peak + runtime (DeepSpeed buffers / ZeRO-3 gathered "
             "params / DDP buckets, 1.5 GiB CUDA reserve)",
}


def parse_memory(text: str) -> int:
    """'80GB', '80G', '80GiB', '141 GB', '24000MB', '80' (GiB) -> bytes. GB and GiB both mean 2^30
    here: an "80GB" card has 80 GiB (81920 MiB)."""
    try:
        return parse_size(text, gb_is_gib=True, bare_unit="G")
    except ValueError:
        raise L2VError(f"cannot read the GPU memory {text!r}", where="--gpu-memory",
                       fix="give a size such as 80GB, 141GB, 24GiB or 40000MB") from None


def parse_deepspeed(spec: Optional[str]) -> int:
    """zero2 / zero3 / none / a DeepSpeed JSON (its zero_optimization.stage) -> ZeRO stage."""
    if spec is None or spec in ZERO_STAGES:
        return ZERO_STAGES[spec]
    p = Path(spec)
    if p.suffix == ".json":
        try:
            stage = int(json.loads(p.read_text()).get("zero_optimization", {}).get("stage", 0))
        except (OSError, ValueError, TypeError) as e:
            raise L2VError(f"cannot read the DeepSpeed config {spec}: {e}", where="--deepspeed") from None
        if stage == 1:  # optimizer states sharded only: between DDP and ZeRO-2; plan it as ZeRO-2
            stage = 2
        return stage
    raise L2VError(f"unknown --deepspeed {spec!r}", where="--deepspeed",
                   fix=did_you_mean(spec, ["zero2", "zero3", "none"]) + " (or a path to a DeepSpeed .json)")


def make_plan(model: str, recipe, *, gpus: Optional[int] = None, nodes: Optional[int] = None,
              deepspeed: Optional[str] = None, gpu_memory: Optional[str | int] = None,
              stages: Optional[list[str]] = None, device: str = "cuda") -> Plan:
    """The plan of every training stage of `recipe` (or of `stages`) for `model` (the recipe's `auto`
    values take the model family's, as in training)."""
    from l2v_cli.config.resolve import resolve_for_model

    arch, alias = resolve_arch(model)
    resolved = resolve_for_model(recipe, model)
    recipe = resolved.recipe
    lc = recipe.launcher
    ds = deepspeed if deepspeed is not None else lc.deepspeed
    dtype = recipe.dtype
    if dtype == "auto":  # as training resolves it: CUDA bf16 (Ampere and newer), CPU fp32 (utils/device.py)
        dtype = "bfloat16" if device == "cuda" else "float32"
    mem = gpu_memory if isinstance(gpu_memory, int) else (parse_memory(gpu_memory) if gpu_memory else DEFAULT_GPU_MEMORY)
    setup = Setup(gpus=gpus or lc.gpus, nodes=nodes or lc.nodes, zero=parse_deepspeed(ds), dtype=dtype,
                  device=device, gpu_memory=mem, launcher=lc.launcher)
    if setup.gpus < 1 or setup.nodes < 1:
        raise L2VError(f"--gpus and --nodes must be >= 1 (got {setup.gpus}, {setup.nodes})", where="launcher")
    train = registry.TRAIN_NAMES
    chosen = stages or [s for s in recipe.stages if s in train]
    if not chosen:
        raise L2VError(f"recipe {recipe.name!r} runs no training stage", where="stages",
                       fix=f"plan another recipe, or pass --stage {train[0]} ({', '.join(train[1:])})")
    for st in chosen:
        if st not in train:
            raise L2VError(f"unknown training stage {st!r}", where="--stage", fix=did_you_mean(st, train))
    plans = []
    for st in chosen:
        shape, ga = shape_from_recipe(recipe, st, setup, resolved.family.family.attn_implementation)
        plans.append(plan_stage(arch, shape, ga, setup))
    return Plan(model=model, arch=arch, recipe=recipe.name, setup=setup, stages=plans, alias=alias)
