"""Which Hugging Face architectures the GGUF export writes, and how each maps onto llama.cpp.

One `ArchSpec` per HF `model_type`: the llama.cpp architecture name (the GGUF's
`general.architecture`), whether q/k weights need llama.cpp's rotary layout, whether RMSNorm
weights are stored as (w - 1) (Gemma), and the extra keys that architecture reads.

Why q/k are permuted for `llama` (HF llama and mistral): HF's rotary embedding rotates the two
HALVES of each head (x[i] with x[i + d/2]); llama.cpp's llama graph rotates ADJACENT pairs
(x[2i] with x[2i+1], "normal" rope). Reordering the output rows of q_proj/k_proj per head
(row 2i <- i, row 2i+1 <- i + d/2) makes both compute the same attention scores; v and o are
untouched. qwen2/qwen3/gemma*/phi3 use "neox" rope in llama.cpp (halves, as HF), so no
permutation. tests/test_gguf_writer.py checks this numerically (transformers' own GGUF reader
undoes the permutation; a writer without it gives different hidden states).
"""

from __future__ import annotations

from dataclasses import dataclass

from l2v_cli.errors import L2VError


@dataclass(frozen=True)
class ArchSpec:
    model_type: str  # HF config.model_type
    gguf_arch: str  # llama.cpp's name (general.architecture)
    permute_qk: bool = False  # HF rotate-half -> llama.cpp adjacent pairs
    norm_plus_one: bool = False  # Gemma RMSNorm multiplies by (1 + w): llama.cpp wants 1 + w stored
    qk_norm: bool = False  # per-head q_norm/k_norm tensors (qwen3, gemma3)
    softcap: bool = False  # gemma2: attention and final logit soft-capping
    sliding: bool = False  # sliding-window layers llama.cpp needs to know about (gemma2/3)
    fixed_attn_scale: bool = False  # llama.cpp scales q by 1/sqrt(head_dim), ignoring query_pre_attn_scalar


# Checked end to end (llama.cpp embeddings == `l2v encode`): see tests/test_gguf_llamacpp.py and
# docs/gguf.md. Every entry is exercised on a tiny random model of its architecture.
SUPPORTED: dict[str, ArchSpec] = {
    "llama": ArchSpec("llama", "llama", permute_qk=True),
    "mistral": ArchSpec("mistral", "llama", permute_qk=True),
    "qwen2": ArchSpec("qwen2", "qwen2"),
    "qwen3": ArchSpec("qwen3", "qwen3", qk_norm=True),
    "gemma": ArchSpec("gemma", "gemma", norm_plus_one=True),
    "gemma2": ArchSpec("gemma2", "gemma2", norm_plus_one=True, softcap=True, sliding=True, fixed_attn_scale=True),
    "gemma3_text": ArchSpec("gemma3_text", "gemma3", norm_plus_one=True, qk_norm=True, sliding=True,
                            fixed_attn_scale=True),
    "phi3": ArchSpec("phi3", "phi3"),
}


def supported_list() -> str:
    return ", ".join(sorted(SUPPORTED))


def arch_for(config: dict, where: str = "config.json") -> ArchSpec:
    """The spec for a model's config.json dict; one-line L2VError for anything else."""
    mt = config.get("model_type")
    if mt == "gemma3" and isinstance(config.get("text_config"), dict):  # multimodal wrapper
        raise L2VError("gemma3 with a vision tower cannot be exported to GGUF as an encoder", where=where,
                       fix="export the text model (model_type gemma3_text)")
    spec = SUPPORTED.get(mt)
    if spec is None:
        raise L2VError(f"architecture {mt!r} has no GGUF export (llama.cpp counterpart not supported here)",
                       where=where, fix=f"supported: {supported_list()}; use --format st for this model")
    return spec


def check_config(spec: ArchSpec, cfg: dict, where: str = "config.json") -> None:
    """Refuse settings llama.cpp would silently compute differently."""
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    rope_types = {rope.get("rope_type") or rope.get("type")} if "rope_type" in rope or "type" in rope else set()
    for v in rope.values():  # gemma3: {"full_attention": {...}, "sliding_attention": {...}}
        if isinstance(v, dict):
            rope_types.add(v.get("rope_type") or v.get("type"))
    odd = sorted(str(t) for t in rope_types - {None, "default"})
    if odd:
        raise L2VError(f"RoPE scaling {', '.join(odd)} is not written to GGUF by l2v yet", where=where,
                       fix="use --format st, or a model without rope scaling")
    if spec.fixed_attn_scale:
        hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        q = cfg.get("query_pre_attn_scalar")
        if q is not None and int(q) != int(hd):
            raise L2VError(f"query_pre_attn_scalar={q} differs from head_dim={hd}: llama.cpp's {spec.gguf_arch} "
                           "scales attention by 1/sqrt(head_dim)", where=where,
                           fix="use --format st for this model")
    partial = cfg.get("partial_rotary_factor", rope.get("partial_rotary_factor", 1.0))  # transformers 5: in rope_parameters
    if spec.model_type == "phi3" and partial not in (None, 1.0):
        raise L2VError("phi3 with partial_rotary_factor != 1 is not supported by the GGUF export", where=where,
                       fix="use --format st for this model")
