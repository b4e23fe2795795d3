"""The memory model of a training step, per device: what autograd keeps, the loss, the step's peak,
the LoRA/optimizer states and the runtime's buffers. Every term is explained in docs/planning.md.

Counted tensor by tensor for a Llama-style layer with LoRA (`layer_saved_bytes`): Korthikanti et
al. 2022's per-layer s*b*h*(34 + 5*a*s/h) bytes, re-derived for RMSNorm/GQA/SwiGLU/LoRA; the s^2
term only with a kernel that materialises the attention matrix. The planner tests check these
numbers against a real step measured byte for byte (tests/memory_probe.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from l2v_cli.modeling.arch import NO_SDPA, Arch, count_params, linears, lora_targets
from l2v_cli.stages import registry

GIB = 2**30
# CUDA context, cuBLAS/cuDNN/NCCL workspaces and allocator slack: memory the GPU loses that
# torch.cuda.max_memory_allocated never shows. A round, conservative figure.
RUNTIME_RESERVE = int(1.5 * GIB)


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

    stage: str  # the name of a training stage of the registry
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
    def hook(self) -> registry.PlanHook:
        return registry.get(self.stage).plan

    @property
    def passes(self) -> int:
        return self.hook.passes

    @property
    def contrastive(self) -> bool:
        return self.hook.loss == "contrastive"

    def candidates(self) -> int:
        """Keys each query is scored against in a contrastive loss: every view but the query's
        own, over the gathered batch (SimCSE: the other view; supervised: positives and hard negatives)."""
        return self.batch * (self.world if self.gather else 1) * (self.passes - 1)


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
    contrastive = shape.contrastive
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
        cands = shape.candidates()
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


def lora_state_bytes(n: int, setup) -> dict[str, int]:
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


def runtime_bytes(arch: Arch, n_lora: int, setup, wbytes: int) -> dict[str, int]:
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
