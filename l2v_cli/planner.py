"""Run planner: parameters, LoRA size and per-device memory of each training stage, before a run.

`l2v plan MODEL --recipe R [--gpus N] [--nodes M] [--deepspeed zero2|zero3]` answers "does this fit,
and where does the memory go?" without downloading weights: the architecture numbers come from a
shipped table (`ARCHS`, the aliases of configs/models.yaml), from `config.json` when MODEL is a
local folder, or from `l2v_cli.modeling.tiny.tiny_config` for `tiny-<arch>`.

The memory model (docs/planning.md explains every term; all numbers are bytes per device):

  weights      P x dtype bytes                                  (ZeRO-3: / world)
  LoRA         N x 16 bytes: 16-bit copy 2 + grads 2 + fp32 master/m/v 12 under DeepSpeed,
               fp32 weights 4 + grads 4 + Adam m/v 8 without it  (ZeRO-2: grads + optimizer / world;
               ZeRO-3: everything / world)
  activations  what autograd saves for backward, counted tensor by tensor for a Llama-style layer
               with LoRA (`layer_saved_bytes`) — Korthikanti et al. 2022's per-layer
               s*b*h*(34 + 5*a*s/h) bytes, re-derived for RMSNorm/GQA/SwiGLU/LoRA; the s^2 term only
               with a kernel that materialises the attention matrix (eager, CPU math path).
               With gradient checkpointing: the layer inputs (e*s*b*h per layer) + one layer
               recomputed in the backward. Times the forward passes kept for backward (SimCSE 2,
               supervised 3); GradCache keeps one chunk's pass instead.
  loss         MNTP: log-probabilities at the masked positions only, mask_prob x tokens x vocab x 4;
               contrastive: the (B x candidates) float32 similarity matrix and its inputs.
  step peak    max(forward end: kept + loss + the masked positions' logits in 16-bit and fp32
               [+ the output_hidden_states tuple];  backward: the passes not yet processed +
               max(one pass, LoRA grads) + one recomputed layer + the gradients flowing through
               one layer)
  runtime      DeepSpeed buckets / ZeRO-3 gathered parameters / DDP buckets, and a fixed reserve
               for the CUDA context and library workspaces.

`measure_step` checks the model on a CPU: one real training step (this package's own model
loading, LoRA, MNTP loss and SimCSE loss) with the saved-tensor bytes counted through
`torch.autograd.graph.saved_tensors_hooks` and the peak of every allocation of the step read from
the PyTorch profiler's memory events (the CPU counterpart of `torch.cuda.max_memory_allocated`);
both are deterministic byte counts, not timings.

Nothing here imports torch or transformers at module level (`l2v plan` on a shipped alias is fast).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from l2v_cli.errors import L2VError, did_you_mean

GIB = 2**30
# CUDA context, cuBLAS/cuDNN/NCCL workspaces and allocator slack: memory the GPU loses that
# torch.cuda.max_memory_allocated never shows. A round, conservative figure.
RUNTIME_RESERVE = int(1.5 * GIB)
DEFAULT_GPU_MEMORY = 80 * GIB
STAGE_SECTIONS = {"train-mntp": "mntp", "train-simcse": "simcse", "train-supervised": "supervised"}
STAGE_TITLES = {"train-mntp": "MNTP", "train-simcse": "SimCSE", "train-supervised": "supervised"}
PASSES = {"train-mntp": 1, "train-simcse": 2, "train-supervised": 3}  # forward passes per batch
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
ZERO_STAGES = {None: 0, "none": 0, "zero2": 2, "zero3": 3}


# --------------------------------------------------------------------------- architectures


@dataclass(frozen=True)
class Arch:
    """The numbers of a decoder that memory and parameter counts depend on."""

    name: str
    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    tied: bool
    qkv_bias: bool = False  # Qwen2: biases on q/k/v
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3, Gemma-3: RMSNorm on q and k (per head)
    norms_per_layer: int = 2  # Gemma-2/3: 4 (pre/post attention, pre/post MLP)
    norm_bias: bool = False  # LayerNorm with bias (StableLM) instead of RMSNorm
    fused_qkv: bool = False  # Phi-3: one qkv_proj and one gate_up_proj
    attn_softcap: Optional[float] = None  # Gemma-2: tanh soft-capping of the attention logits
    logit_softcap: Optional[float] = None  # Gemma-2: final logits soft-capping (MNTP)
    source: str = "table"

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _a(name, model_type, hidden, layers, heads, kv_heads, ffn, vocab, tied, head_dim=None, **kw) -> Arch:
    return Arch(name, model_type, hidden, layers, heads, kv_heads, head_dim or hidden // heads, ffn, vocab,
                tied, **kw)


# The aliases of configs/models.yaml, from their config.json on the Hub (checked: the parameter
# count of each equals the `params` of its alias).
ARCHS: dict[str, Arch] = {
    "llama2-7b": _a("Llama-2-7B", "llama", 4096, 32, 32, 32, 11008, 32000, False),
    "mistral-7b": _a("Mistral-7B-v0.2", "mistral", 4096, 32, 32, 8, 14336, 32000, False),
    "llama3-8b": _a("Llama-3-8B", "llama", 4096, 32, 32, 8, 14336, 128256, False),
    "qwen2.5-7b": _a("Qwen2.5-7B", "qwen2", 3584, 28, 28, 4, 18944, 152064, False, qkv_bias=True),
    "sheared-llama-1.3b": _a("Sheared-LLaMA-1.3B", "llama", 2048, 24, 16, 16, 5504, 32000, False),
    "smollm2-135m": _a("SmolLM2-135M", "llama", 576, 30, 9, 3, 1536, 49152, True),
    "gemma3-270m": _a("Gemma-3-270m", "gemma3_text", 640, 18, 4, 1, 2048, 262144, True, head_dim=256,
                      qk_norm=True, norms_per_layer=4),
}


def arch_from_config(cfg: dict, name: str = "", source: str = "config.json") -> Arch:
    """An `Arch` from a Hugging Face config dict (text config of multimodal models)."""
    if "hidden_size" not in cfg and isinstance(cfg.get("text_config"), dict):
        cfg = cfg["text_config"]
    need = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
    missing = [k for k in need if cfg.get(k) is None]
    if missing:
        raise L2VError(f"config.json lacks {', '.join(missing)}: not a decoder the planner knows", where=source,
                       fix="give a Hugging Face decoder folder (Llama, Mistral, Qwen, Gemma, Phi-3, ...)")
    mt = str(cfg.get("model_type", "llama"))
    h, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    kv = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or h // heads)
    attn_bias = bool(cfg.get("attention_bias", False))
    return Arch(
        name=name or str(cfg.get("_name_or_path") or mt), model_type=mt, hidden=h,
        layers=int(cfg["num_hidden_layers"]), heads=heads, kv_heads=kv, head_dim=head_dim,
        ffn=int(cfg["intermediate_size"]), vocab=int(cfg["vocab_size"]),
        tied=bool(cfg.get("tie_word_embeddings", mt not in ("llama", "mistral", "qwen2", "qwen3", "phi3"))),
        qkv_bias=attn_bias or mt == "qwen2" or bool(cfg.get("use_qkv_bias", False)),
        o_bias=attn_bias and mt not in ("qwen3", "gemma", "gemma2", "gemma3_text"),
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        qk_norm=mt in ("qwen3", "gemma3_text") or bool(cfg.get("qk_layernorm", False)),
        norms_per_layer=4 if mt in ("gemma2", "gemma3_text") else 2,
        norm_bias=mt == "stablelm",
        fused_qkv=mt == "phi3",
        attn_softcap=cfg.get("attn_logit_softcapping") if mt == "gemma2" else None,
        logit_softcap=cfg.get("final_logit_softcapping"),
        source=source,
    )


def resolve_arch(model: str) -> tuple[Arch, Any]:
    """(Arch, ModelAlias or None) for MODEL: alias, tiny-<arch>, local folder, or a hub id whose
    config.json is in the local Hugging Face cache. Never downloads weights."""
    from l2v_cli.modeling.aliases import TINY_PREFIX, find_alias, get_alias, load_aliases

    spec = str(model).strip()
    p = Path(spec).expanduser()
    if p.is_file() and p.name == "config.json":
        p = p.parent
    if p.is_dir():
        cfg_file = p / "config.json"
        if not cfg_file.is_file():
            raise L2VError(f"{p} has no config.json", where="MODEL",
                           fix="give a Hugging Face model folder, an alias (`l2v models`) or a hub id")
        try:
            cfg = json.loads(cfg_file.read_text())
        except ValueError as e:
            raise L2VError(f"unreadable config.json: {e}", where=str(cfg_file)) from None
        from l2v_cli.modeling.aliases import alias_for_folder

        return arch_from_config(cfg, p.name, str(cfg_file)), alias_for_folder(p)
    if p.is_file():
        raise L2VError(f"{p} is a file: the planner reads a config.json, not weights", where="MODEL",
                       fix="give the alias, the hub id or a converted folder (a .gguf converts on first use "
                       "by `l2v enable-bidir`)")
    alias = find_alias(spec)
    if alias is None and spec.lower().startswith(TINY_PREFIX):
        alias = get_alias(spec)  # unknown tiny arch: L2VError with close matches
    if alias is not None:
        if alias.is_tiny:
            from l2v_cli.modeling.tiny import tiny_config

            cfg, _ = tiny_config(alias.tiny_arch)
            return arch_from_config(cfg.to_dict(), alias.name, f"tiny_config({alias.tiny_arch!r})"), alias
        if alias.name in ARCHS:
            return ARCHS[alias.name], alias
        return _hub_arch(alias.hub_id, alias.name), alias
    by_hub = {a.hub_id.lower(): a for a in load_aliases().values() if a.hub_id}
    if spec.lower() in by_hub and by_hub[spec.lower()].name in ARCHS:
        a = by_hub[spec.lower()]
        return ARCHS[a.name], a
    if re.match(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$", spec):
        return _hub_arch(spec, spec), None
    get_alias(spec)  # raises: unknown alias, with close matches
    raise AssertionError("unreachable")


def _hub_arch(hub_id: Optional[str], name: str) -> Arch:
    """config.json of a hub model from the local cache only (no network: planning must be instant)."""
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(hub_id, "config.json", local_files_only=True)
    except Exception:
        raise L2VError(f"no architecture numbers for {name}: not in the planner's table and its config.json "
                       "is not in the local Hugging Face cache", where="MODEL",
                       fix=f"fetch it once (`hf download {hub_id} config.json`) or give a local folder") from None
    return arch_from_config(json.loads(Path(path).read_text()), name, f"hub cache {hub_id}")


# --------------------------------------------------------------------------- parameter counts


def linears(arch: Arch) -> dict[str, tuple[int, int]]:
    """(in, out) of every linear layer of one decoder layer, by module name."""
    h, f, q, kv = arch.hidden, arch.ffn, arch.q_dim, arch.kv_dim
    if arch.fused_qkv:
        return {"qkv_proj": (h, q + 2 * kv), "o_proj": (q, h), "gate_up_proj": (h, 2 * f), "down_proj": (f, h)}
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, f), "up_proj": (h, f), "down_proj": (f, h)}


def layer_params(arch: Arch) -> int:
    h, q, kv = arch.hidden, arch.q_dim, arch.kv_dim
    n = sum(i * o for i, o in linears(arch).values())
    n += (q + 2 * kv) * arch.qkv_bias + h * arch.o_bias + (2 * arch.ffn + h) * arch.mlp_bias
    n += arch.norms_per_layer * h * (2 if arch.norm_bias else 1)
    n += (2 * arch.head_dim) * arch.qk_norm
    return n


def count_params(arch: Arch) -> dict[str, int]:
    """Exact parameter count from the architecture numbers: embeddings, layers, final norm, LM head."""
    embed = arch.vocab * arch.hidden
    layers = arch.layers * layer_params(arch)
    final_norm = arch.hidden * (2 if arch.norm_bias else 1)
    head = 0 if arch.tied else embed
    return {"embeddings": embed, "layers": layers, "final_norm": final_norm, "lm_head": head,
            "total": embed + layers + final_norm + head}


def lora_targets(arch: Arch, target_modules: list[str]) -> list[str]:
    """The per-layer linear names LoRA wraps (peft's 'all-linear' = every linear but the LM head)."""
    names = list(linears(arch))
    if list(target_modules) == ["all-linear"]:
        return names
    hit = [n for n in names if any(n == t or n.endswith("." + t) or t.endswith(n) for t in target_modules)]
    if not hit:
        raise L2VError(f"LoRA target modules {list(target_modules)} match no layer of {arch.name}",
                       where="lora.target_modules", fix=f"use ['all-linear'] or some of {names}")
    return hit


def lora_params(arch: Arch, r: int, target_modules: list[str] = ("all-linear",)) -> int:
    """Trainable LoRA parameters: r x (in + out) for every targeted linear of every layer."""
    lin = linears(arch)
    return arch.layers * sum(r * (lin[n][0] + lin[n][1]) for n in lora_targets(arch, list(target_modules)))


# --------------------------------------------------------------------------- activations


@dataclass
class Precision:
    """Byte sizes of what autograd saves. `act` = 16-bit (2) or float32 (4) activations.
    `mask` = a dropout mask element: CUDA's fused dropout keeps a bool (1 byte), the CPU kernel
    keeps a float tensor of the input's dtype. `norm` = RMSNorm computes in float32, so its saved
    input is an fp32 copy whatever the activation dtype (LayerNorm saves its input as is)."""

    act: int = 2
    mask: int = 1
    device: str = "cuda"
    lora: int = 0  # bytes of the LoRA branch's saved tensors (0 = act): 4 when LoRA runs in fp32
    grad: int = 0  # bytes of the gradients flowing back through a layer (0 = max(act, lora))

    def __post_init__(self):
        self.lora = self.lora or self.act
        self.grad = self.grad or max(self.act, self.lora)

    @classmethod
    def of(cls, dtype_bytes: int, device: str = "cuda", deepspeed: bool = True) -> "Precision":
        """Training precision. On CUDA the LoRA branch saves 16-bit tensors either way (DeepSpeed
        casts the adapters; under autocast lora_A saves the 16-bit cast of its input), but without
        DeepSpeed the adapters stay fp32 (peft), so the gradients through them are fp32."""
        grad = 4 if (device == "cuda" and not deepspeed) else 0
        return cls(act=dtype_bytes, mask=1 if device == "cuda" else dtype_bytes, device=device, grad=grad)


NO_SDPA = ("gemma2",)  # transformers has no sdpa path for these: loading falls back to eager


def attention_kernel(attn_implementation: str, device: str, attention_dropout: float,
                     model_type: str = "llama") -> str:
    """'fused' (flash / memory-efficient: no s^2 tensor kept) or 'eager' / 'math' (s^2 kept).
    CUDA's sdpa kernels do dropout inside; the CPU flash kernel does not, so CPU sdpa with
    attention dropout falls back to the math path."""
    if attn_implementation == "eager" or (attn_implementation != "flash_attention_2" and model_type in NO_SDPA):
        return "eager"
    if device != "cuda" and attention_dropout > 0:
        return "math"
    return "fused"


def layer_saved_bytes(arch: Arch, b: int, s: int, prec: Precision, *, lora_r: int, targets: list[str],
                      lora_dropout: float, attention_dropout: float = 0.0, kernel: str = "fused",
                      padded: bool = False, input_requires_grad: bool = True) -> dict[str, int]:
    """Bytes autograd saves in ONE decoder layer for a (b x s) batch, by component.

    Frozen base linears save nothing (their weight needs no gradient, and the gradient to their
    input needs only the weight); each LoRA linear saves its dropout mask and dropped input (for
    lora_A's gradient) and the rank-r activation (for lora_B's). `input_requires_grad=False` is the
    first layer without gradient checkpointing: its input comes from the frozen embedding, so the
    input norm and the q/k/v dropout masks are not kept."""
    T, h, f, q, kv = b * s, arch.hidden, arch.ffn, arch.q_dim, arch.kv_dim
    e, nb = prec.act, (prec.act if arch.norm_bias else 4)
    out: dict[str, int] = {}
    n_norm = arch.norms_per_layer - (0 if input_requires_grad else 1)
    out["norms"] = n_norm * (nb * T * h + 4 * T) + (nb * T * (q + kv) if arch.qk_norm else 0)
    # LoRA: inputs grouped by the tensor they read (q/k/v share the normed input, gate/up too).
    lin = linears(arch)
    groups = {"attn_in": [n for n in ("q_proj", "k_proj", "v_proj", "qkv_proj") if n in lin],
              "o": ["o_proj"], "mlp_in": [n for n in ("gate_proj", "up_proj", "gate_up_proj") if n in lin],
              "down": ["down_proj"]}
    lora = 0
    for group, names in groups.items():
        hit = [n for n in names if n in targets]
        if not hit:
            continue
        d, el = lin[hit[0]][0], prec.lora
        if lora_dropout > 0:  # per module: its own mask (not kept when the input needs no grad) + dropped input
            mask = 0 if (group == "attn_in" and not input_requires_grad) else prec.mask
            lora += len(hit) * (mask + el) * T * d
        elif el == e:  # lora_A reads the shared input itself
            lora += e * T * d
        else:  # each adapter casts the input to its own dtype first
            lora += len(hit) * el * T * d
        lora += len(hit) * el * T * lora_r
    out["lora"] = lora
    # Attention: q, k, v (repeated to all heads when a padding mask forbids sdpa's GQA path) ...
    repeat = padded and arch.kv_heads != arch.heads
    kv_eff = q if repeat else kv
    # v is a view of the projection output: with a fused qkv_proj it keeps all of q, k and v alive
    v_eff = kv_eff if (repeat or not arch.fused_qkv) else q + 2 * kv
    if kernel == "fused":  # flash / memory-efficient: q, k, v, output + fp32 log-sum-exp
        out["attention"] = e * T * (2 * q + kv_eff + v_eff) + 4 * b * arch.heads * s
        if padded:  # sdpa turns the (b, 1, s, s) bool padding mask into a float bias, per layer, and keeps it
            out["attention"] += e * b * s * s
    else:  # the (b, heads, s, s) probabilities are kept: Korthikanti's 5*a*s^2*b term
        kv_eff = q if arch.kv_heads != arch.heads else kv  # eager/math always repeat k and v
        s2 = b * arch.heads * s * s
        if kernel == "eager":  # softmax in fp32, cast back, dropout
            per = 4 + ((prec.mask + e) if attention_dropout > 0 else (e if e < 4 else 0))
        else:  # math (CPU sdpa with dropout): computed in float32 whatever the dtype
            per = 4 + ((4 + 4) if attention_dropout > 0 else 0)
        if arch.attn_softcap:
            per += e
        ea = 4 if kernel == "math" else e
        out["attention"] = ea * T * (q + 2 * kv_eff) + per * s2
    # MLP: act(gate) needs gate's output; act(gate) * up needs both factors.
    out["mlp"] = 3 * e * T * f
    out["total"] = sum(out.values())
    return out


@dataclass
class Shape:
    """One training micro-batch of a stage, as the planner sees it."""

    stage: str  # train-mntp | train-simcse | train-supervised
    batch: int
    seq: int
    lora_r: int = 16
    targets: tuple = ("all-linear",)
    lora_dropout: float = 0.05
    attention_dropout: float = 0.0
    gradient_checkpointing: bool = True
    mask_probability: float = 0.2
    grad_cache_chunk: int = 0
    world: int = 1  # processes whose embeddings are gathered as negatives
    gather: bool = True
    attn_implementation: str = "sdpa"

    @property
    def passes(self) -> int:
        return PASSES[self.stage]


def masked_tokens(shape: Shape) -> int:
    """Expected MNTP targets per micro-batch: position 0 is never masked (no predecessor)."""
    return int(round(shape.mask_probability * shape.batch * (shape.seq - 1)))


def activation_bytes(arch: Arch, shape: Shape, prec: Precision, *, checkpointing: Optional[bool] = None
                     ) -> dict:
    """Activation memory of one micro-batch (all its forward passes), by component.

    kept        saved for backward outside the loss: every layer (no checkpointing) or every
                layer's input (checkpointing), plus the final norm and the pooling
    recompute   checkpointing: one layer's full activations, rebuilt in the backward
    loss        MNTP log-probabilities at the masked positions / contrastive similarity matrix
    fwd_extra   alive at the end of the forward but not saved: the masked positions' logits in
                the activation dtype and in fp32, and (16-bit, no checkpointing) the
                output_hidden_states tuple
    bwd_extra   alive in the backward: the gradients flowing through one layer (2*e*T*(h + ffn)),
                and (contrastive) the gradient at every pass's output (passes*e*T*h)
    `checkpointing` overrides the shape's setting. `activations` = kept + recompute."""
    ckpt = shape.gradient_checkpointing if checkpointing is None else checkpointing
    targets = lora_targets(arch, list(shape.targets))
    contrastive = shape.stage != "train-mntp"
    rows, passes = shape.batch, shape.passes
    if contrastive and shape.grad_cache_chunk:  # GradCache: one chunk's graph at a time
        rows, passes = min(shape.grad_cache_chunk, shape.batch), 1
    b, s, h, e = rows, shape.seq, arch.hidden, prec.act
    T = b * s
    kernel = attention_kernel(shape.attn_implementation, prec.device, shape.attention_dropout, arch.model_type)
    kw = dict(lora_r=shape.lora_r, targets=targets, lora_dropout=shape.lora_dropout,
              attention_dropout=shape.attention_dropout, kernel=kernel, padded=contrastive)
    full = layer_saved_bytes(arch, b, s, prec, **kw)["total"]
    nb = e if arch.norm_bias else 4
    outside = nb * T * h + 4 * T  # the final norm
    if contrastive:
        outside += 5 * T  # pooling: where() keeps the bool mask, the weighted sum the fp32 weights
    out: dict = {"kernel": kernel, "per_layer": full, "passes": passes}
    if ckpt:  # the input needs grad (enable_input_require_grads), so layer 0 is like the others
        out["kept"] = passes * (arch.layers * e * T * h + outside)
        out["recompute"] = full
    else:
        first = layer_saved_bytes(arch, b, s, prec, input_requires_grad=False, **kw)["total"]
        out["kept"] = passes * (first + (arch.layers - 1) * full + outside)
        out["recompute"] = 0
    out["activations"] = out["kept"] + out["recompute"]
    fwd_extra = 0
    if contrastive:
        B = shape.batch
        cands = B * (shape.world if shape.gather else 1) * (2 if shape.stage == "train-supervised" else 1)
        out["loss"] = 4 * B * cands + 4 * h * (shape.passes * B + cands)  # logits, fp32 embeddings
        if shape.grad_cache_chunk:
            out["loss"] += 2 * 4 * h * shape.passes * B  # cached embeddings and their gradients
    else:
        M, V = masked_tokens(shape), arch.vocab
        out["loss"] = 4 * M * V * (2 if arch.logit_softcap else 1) + 16 * M
        fwd_extra += (e + 4) * M * V
        if not ckpt and e < 4:
            fwd_extra += (arch.layers + 1) * e * T * h
    out["fwd_extra"] = fwd_extra
    out["bwd_extra"] = 2 * prec.grad * T * (h + arch.ffn)
    if contrastive:  # each pass's output gradient waits while the engine works through another pass
        out["bwd_extra"] += passes * e * T * h
    return out


def backward_peak(act: dict, grad_bytes: int) -> int:
    """Within one pass's backward its activations are freed layer by layer while the LoRA
    gradients fill up: (left) + (grads so far) <= max(pass, grads). The backward runs one pass
    after the other, so the passes not yet processed stay whole; plus one recomputed layer and
    the gradients flowing through it."""
    one = act["kept"] // act["passes"]
    return act["kept"] - one + max(one, grad_bytes) + act["recompute"] + act["bwd_extra"]


def step_peak(act: dict, grad_bytes: int) -> int:
    """Peak of a training step above the persistent memory (weights, LoRA weights, optimizer):
    the larger of the forward end (kept + loss + fwd_extra) and the backward (`backward_peak`)."""
    return max(act["kept"] + act["loss"] + act["fwd_extra"], backward_peak(act, grad_bytes))


# --------------------------------------------------------------------------- the plan


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
        return STAGE_TITLES[self.stage]

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


def lora_state_bytes(n: int, setup: Setup) -> dict[str, int]:
    """LoRA weights, gradients and AdamW state per device (16 bytes a parameter before sharding)."""
    w = setup.world
    if setup.zero:  # DeepSpeed: 16-bit model copy and grads, fp32 master + m + v in the optimizer
        p, g, o = 2 * n, 2 * n, 12 * n
        if setup.zero >= 2:
            g, o = -(-g // w), -(-o // w)
        if setup.zero >= 3:
            p = -(-p // w)
    else:  # peft keeps LoRA in fp32 under autocast: weights 4, grads 4, Adam m + v 8
        p, g, o = 4 * n, 4 * n, 8 * n
    return {"lora_weights": p, "lora_grads": g, "optimizer": o}


def runtime_bytes(arch: Arch, n_lora: int, setup: Setup, wbytes: int) -> dict[str, int]:
    """Buffers of the distributed runtime, and the fixed CUDA reserve."""
    out, h = {}, arch.hidden
    if setup.zero == 2:  # HF "auto" reduce bucket = hidden^2; the allgather bucket only sees LoRA
        out["deepspeed_buffers"] = 2 * h * h + 2 * min(200_000_000, n_lora)
    elif setup.zero == 3:  # up to stage3_max_live_parameters (1e9) gathered + the prefetch bucket
        live = min(1_000_000_000, count_params(arch)["total"])
        out["zero3_gathered"] = live * wbytes + int(0.9 * h * h) * wbytes + 2 * h * h
    elif setup.world > 1:  # DDP keeps a bucketed copy of the (fp32 LoRA) gradients
        out["ddp_buckets"] = 4 * n_lora
    if setup.device == "cuda":
        out["cuda_runtime"] = RUNTIME_RESERVE
    return out


def plan_stage(arch: Arch, shape: Shape, grad_accum: int, setup: Setup, *, check: bool = True) -> StagePlan:
    """Parameters, per-device memory and tokens of one stage; warnings when it does not fit."""
    params = count_params(arch)
    wbytes = DTYPE_BYTES[setup.dtype]
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
    if shape.stage == "train-mntp":
        detail["masked_tokens"] = masked_tokens(shape)
    else:
        detail["candidates_per_query"] = shape.batch * (setup.world if shape.gather else 1) * (
            2 if shape.stage == "train-supervised" else 1)
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
    sec = STAGE_SECTIONS[sh.stage]
    if sh.grad_cache_chunk and setup.zero and sh.stage != "train-mntp":
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
        if sh.stage != "train-mntp":
            fix += " (fewer in-batch negatives)"
        fixes.append(fix)
    if not sh.gradient_checkpointing:
        fixes.append(f"{sec}.train.gradient_checkpointing=true")
    if sh.stage != "train-mntp" and not sh.grad_cache_chunk and not setup.zero:
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


def shape_from_recipe(recipe, stage: str, setup: Setup) -> tuple[Shape, int]:
    sec = getattr(recipe, STAGE_SECTIONS[stage])
    tr = sec.train
    return Shape(
        stage=stage, batch=tr.per_device_batch_size, seq=sec.max_seq_length, lora_r=sec.lora.r,
        targets=tuple(sec.lora.target_modules), lora_dropout=sec.lora.dropout,
        attention_dropout=getattr(sec, "attention_dropout", 0.0),
        gradient_checkpointing=tr.gradient_checkpointing,
        mask_probability=getattr(sec, "mask_probability", 0.2),
        grad_cache_chunk=getattr(sec, "grad_cache_chunk_size", 0),
        world=setup.world, gather=getattr(sec, "gather_across_processes", True),
        attn_implementation=recipe.bidir.attn_implementation,
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
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B)?\s*", str(text).upper())
    if not m or float(m.group(1)) <= 0:
        raise L2VError(f"cannot read the GPU memory {text!r}", where="--gpu-memory",
                       fix="give a size such as 80GB, 141GB, 24GiB or 40000MB")
    unit = {"": 3, "K": 1, "M": 2, "G": 3, "T": 4}[m.group(2)]
    return int(float(m.group(1)) * 1024**unit)


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
    """The plan of every training stage of `recipe` (or of `stages`) for `model`."""
    arch, alias = resolve_arch(model)
    lc = recipe.launcher
    ds = deepspeed if deepspeed is not None else lc.deepspeed
    dtype = recipe.dtype
    if dtype == "auto":  # CUDA: bf16 (Ampere and newer); CPU: what this CPU runs natively, as training does
        if device == "cuda":
            dtype = "bfloat16"
        else:
            from l2v_cli.utils.device import cpu_has_fast_bf16

            dtype = "bfloat16" if cpu_has_fast_bf16() else "float32"
    mem = gpu_memory if isinstance(gpu_memory, int) else (parse_memory(gpu_memory) if gpu_memory else DEFAULT_GPU_MEMORY)
    setup = Setup(gpus=gpus or lc.gpus, nodes=nodes or lc.nodes, zero=parse_deepspeed(ds), dtype=dtype,
                  device=device, gpu_memory=mem, launcher=lc.launcher)
    if setup.gpus < 1 or setup.nodes < 1:
        raise L2VError(f"--gpus and --nodes must be >= 1 (got {setup.gpus}, {setup.nodes})", where="launcher")
    chosen = stages or [s for s in recipe.stages if s in STAGE_SECTIONS]
    if not chosen:
        raise L2VError(f"recipe {recipe.name!r} runs no training stage", where="stages",
                       fix="plan another recipe, or pass --stage train-mntp (train-simcse, train-supervised)")
    for st in chosen:
        if st not in STAGE_SECTIONS:
            raise L2VError(f"unknown training stage {st!r}", where="--stage", fix=did_you_mean(st, STAGE_SECTIONS))
    plans = []
    for st in chosen:
        shape, ga = shape_from_recipe(recipe, st, setup)
        plans.append(plan_stage(arch, shape, ga, setup))
    return Plan(model=model, arch=arch, recipe=recipe.name, setup=setup, stages=plans, alias=alias)


# --------------------------------------------------------------------------- measurement (CPU)


def _profile_peak(fn) -> int:
    """Peak bytes allocated above the starting point while `fn` runs, from the PyTorch profiler's
    memory events (allocation and free records, replayed in program order)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
              and str(e.device_type()).endswith("CPU")]
    events.sort(key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak


def measure_step(model: str, stage: str = "train-mntp", batch: int = 2, seq: int = 128, *, lora_r: int = 16,
                 lora_dropout: float = 0.05, attention_dropout: Optional[float] = None,
                 gradient_checkpointing: bool = False, mask_probability: float = 0.2, pad: int = 16,
                 seed: int = 0, profile_peak: bool = True, dtype: str = "float32") -> dict:
    """One real training step on the CPU (float32, or bfloat16 base weights with peft's float32
    adapters), measured byte for byte.

    MNTP: this package's MntpCollator masking and mntp_loss (LM head at masked positions only);
    SimCSE: two passes of the same batch (the last `pad` tokens of row 0 are padding), mean
    pooling and info_nce. Returns saved-activation bytes (saved_tensors_hooks; under gradient
    checkpointing: the tensors saved outside the checkpointed layers + the layer inputs the
    checkpoints keep), the profiler's peak of the step above its start (forward, backward and the
    AdamW step, whose state is allocated then), and the parameter / gradient / optimizer bytes."""
    import contextlib

    import torch

    from l2v_cli.config.schema import LoraConfig
    from l2v_cli.data.mntp import MntpCollator, logit_softcap, mntp_loss
    from l2v_cli.modeling.loading import load_model
    from l2v_cli.stages.contrastive import embed
    from l2v_cli.training.losses import info_nce
    from l2v_cli.training.lora import add_lora, set_attention_dropout, unwrap

    if attention_dropout is None:
        attention_dropout = 0.3 if stage == "train-simcse" else 0.0
    loaded = load_model(model, dtype=dtype, attn_implementation="sdpa", bidirectional=True, verify=False,
                        lm_head=True, device="cpu")
    m, tok = loaded.model, loaded.tokenizer
    set_attention_dropout(m, attention_dropout)
    m = add_lora(m, LoraConfig(r=lora_r, alpha=2 * lora_r, dropout=lora_dropout), gradient_checkpointing,
                 seed=seed)
    m.train()
    g = torch.Generator().manual_seed(seed)
    collator = MntpCollator(tok, tok.convert_tokens_to_ids("_") if "_" in tok.get_vocab() else tok.eos_token_id,
                            mask_probability, seed=seed)
    ordinary = collator.random_ids
    ids = ordinary[torch.randint(len(ordinary), (batch, seq), generator=g)]
    attn = torch.ones(batch, seq, dtype=torch.long)
    params = {p.untyped_storage().data_ptr() for p in m.parameters()}
    trainable = [p for p in m.parameters() if p.requires_grad]
    seen: set[int] = set()
    counted = {"saved": 0, "on": False}

    def pack(t):
        if not counted["on"]:
            return t
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr not in params and ptr not in seen:
            seen.add(ptr)
            counted["saved"] += st.nbytes()
        return t

    def layer_input(_mod, args, kwargs):  # what a checkpointed layer keeps: its input
        hs = args[0] if args else kwargs.get("hidden_states")
        if gradient_checkpointing and hs is not None:
            pack(hs)

    body = unwrap(m)
    layers = body.model.layers if hasattr(body, "model") else body.layers
    handles = [layer.register_forward_pre_hook(layer_input, with_kwargs=True) for layer in layers]
    info: dict = {}
    if stage == "train-mntp":
        masked, labels = collator.mask(ids, attn, step=0)
        info["masked_tokens"] = int((labels[:, 1:] != -100).sum())

        def loss_fn():
            out = m(input_ids=masked, attention_mask=attn, output_hidden_states=True, logits_to_keep=1,
                    use_cache=False)
            return mntp_loss(out.hidden_states[-1], labels, unwrap(m).get_output_embeddings(),
                             softcap=logit_softcap(m.config))
    else:
        attn[0, seq - pad:] = 0
        ids[0, seq - pad:] = tok.pad_token_id
        views = 3 if stage == "train-supervised" else 2
        batch_ = {"input_ids": ids, "attention_mask": attn,
                  "position_ids": (attn.cumsum(1) - 1).clamp(min=0), "pool_mask": attn}

        def loss_fn():
            embs = [embed(m, batch_, "mean") for _ in range(views)]
            return info_nce(embs[0], embs[1], 20.0, negatives=embs[2] if views > 2 else None, gather=False)

    opt = torch.optim.AdamW(trainable, lr=1e-5)

    def step(hooks: bool = True):
        counted["on"] = hooks
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t) if hooks else contextlib.nullcontext():
            loss = loss_fn()
        counted["on"] = False
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)  # as the Trainer does: gradients live from backward to step

    torch.manual_seed(seed)
    if profile_peak:  # a first step allocates AdamW's state; the second is the steady state
        step(hooks=False)
    peak = _profile_peak(step) if profile_peak else None
    if not profile_peak:
        step()
    for hd in handles:
        hd.remove()
    n_lora = sum(p.numel() for p in trainable)
    return {
        "model": model, "stage": stage, "batch": batch, "seq": seq, "lora_r": lora_r,
        "gradient_checkpointing": gradient_checkpointing, "attention_dropout": attention_dropout,
        "lora_dropout": lora_dropout, "dtype": dtype,
        "saved_activation_bytes": counted["saved"], "step_peak_bytes": peak,
        "param_bytes": sum(p.numel() * p.element_size() for p in m.parameters() if not p.requires_grad),
        "lora_params": n_lora, "lora_bytes": 4 * n_lora,
        "grad_bytes": sum(p.numel() * p.element_size() for p in trainable),
        "optimizer_bytes": sum(t.numel() * t.element_size() for st in opt.state.values() for t in st.values()
                               if torch.is_tensor(t) and t.dim() > 0),
        **info,
    }


def estimate_measured(arch: Arch, measured: dict) -> dict:
    """The planner's numbers for a `measure_step` run (CPU, float32, one process, no DeepSpeed)."""
    shape = Shape(stage=measured["stage"], batch=measured["batch"], seq=measured["seq"], lora_r=measured["lora_r"],
                  lora_dropout=measured["lora_dropout"], attention_dropout=measured["attention_dropout"],
                  gradient_checkpointing=measured["gradient_checkpointing"], world=1, gather=False)
    if "masked_tokens" in measured:  # the measured batch's own count (the planner's is an expectation)
        shape.mask_probability = measured["masked_tokens"] / (measured["batch"] * (measured["seq"] - 1))
    # CPU: float dropout masks; in bf16 the adapters (and so their saved tensors) stay float32
    prec = Precision.of(4, "cpu") if measured.get("dtype", "float32") == "float32" else Precision(2, 4, "cpu", 4)
    act = activation_bytes(arch, shape, prec)
    n = lora_params(arch, shape.lora_r)
    states = lora_state_bytes(n, Setup(zero=0, dtype="float32", device="cpu"))
    # the hooks see what is kept (not the layer a checkpoint recomputes in the backward)
    return {"saved_activation_bytes": act["kept"] + act["loss"], "step_peak_bytes": step_peak(act, states["lora_grads"]),
            "lora_params": n, "param_bytes": count_params(arch)["total"] * 4, "grad_bytes": states["lora_grads"],
            "optimizer_bytes": states["optimizer"], "kernel": act["kernel"]}


__all__ = ["ARCHS", "Arch", "DEFAULT_GPU_MEMORY", "GIB", "Plan", "Precision", "Setup", "Shape", "StagePlan",
           "activation_bytes", "arch_from_config", "count_params", "estimate_measured", "layer_saved_bytes",
           "lora_params", "make_plan", "measure_step", "parse_memory", "plan_stage", "resolve_arch"]
