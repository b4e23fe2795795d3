"""Architecture facts of a decoder, from its config numbers alone: the shapes of its layers, its exact
parameter count, which linears LoRA wraps and how many parameters that adds.

The numbers come from a config.json (a local folder, the hub cache), from the `config:` block
configs/models.yaml ships beside each alias, or from the tiny-model builder — never from weights,
so planning a 7B run is instant. Nothing here imports torch or transformers at module level.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from l2v_cli.errors import L2VError

# transformers has no sdpa attention for these model types: loading falls back to eager
NO_SDPA = ("gemma2",)


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


def shipped_arch(alias) -> Arch:
    """The architecture of an alias from the config numbers configs/models.yaml ships for it."""
    return arch_from_config(alias.config, alias.name, "configs/models.yaml")


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
        if alias.config:
            return shipped_arch(alias), alias
        return _hub_arch(alias.hub_id, alias.name), alias
    by_hub = {a.hub_id.lower(): a for a in load_aliases().values() if a.hub_id}
    if spec.lower() in by_hub and by_hub[spec.lower()].config:
        a = by_hub[spec.lower()]
        return shipped_arch(a), a
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
