"""Tiny random decoders of each supported architecture, with the small tokenizer shipped in the repo.

For tests and smoke runs: `tiny-<arch>` works wherever a MODEL is accepted.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

# Shared shape: 2 layers, width 64 — seconds to build, train and probe on a CPU.
_BASE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, attention_dropout=0.0,
             tie_word_embeddings=True)

TINY_ARCHS: dict[str, dict] = {
    "llama": {},
    "mistral": {"sliding_window": None},
    "qwen2": {},
    "qwen3": {"head_dim": 16},
    "gemma": {"head_dim": 16},
    "gemma2": {"head_dim": 16, "sliding_window": 256},
    "gemma3_text": {"head_dim": 16, "sliding_window": 256},
    "phi3": {},
    # StableLM's sdpa attention reads its own `is_causal` attribute: it exercises the fallback.
    "stablelm": {},
}


def tokenizer_dir() -> Path:
    return Path(str(files("l2v_cli.configs") / "tiny" / "tokenizer"))


def tiny_config(arch: str, attn_implementation: str = "sdpa"):
    from transformers import AutoConfig, AutoTokenizer

    if arch not in TINY_ARCHS:
        from l2v_cli.errors import L2VError, did_you_mean

        raise L2VError(f"no tiny model for architecture {arch!r}", where="tiny-<arch>",
                       fix=did_you_mean(arch, TINY_ARCHS))
    tok = AutoTokenizer.from_pretrained(tokenizer_dir())
    kw = dict(_BASE, **TINY_ARCHS[arch], vocab_size=len(tok), bos_token_id=tok.bos_token_id,
              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg = AutoConfig.for_model(arch, **kw)
    cfg._attn_implementation = attn_implementation
    return cfg, tok


def make_tiny_model(arch: str, seed: int = 0, attn_implementation: str = "sdpa"):
    """A random causal LM of `arch` (fp32) and the shipped tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg, tok = tiny_config(arch, attn_implementation)
    torch.manual_seed(seed)
    try:
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn_implementation)
    except ValueError:  # no sdpa path for this architecture (Gemma-2): eager always exists
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    return model.float().eval(), tok


def save_tiny_model(arch: str, out: str | Path, seed: int = 0) -> Path:
    """Write a tiny model folder (safetensors + tokenizer), as if downloaded from the Hub."""
    model, tok = make_tiny_model(arch, seed)
    out = Path(out)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out
