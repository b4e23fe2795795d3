"""Shared by the GGUF spec files: tiny bidirectional model folders of each architecture."""

from __future__ import annotations

from pathlib import Path

# gemma2/gemma3 tiny configs keep HF's default query_pre_attn_scalar (256) while their head_dim is
# 16; llama.cpp scales by 1/sqrt(head_dim) (as every released Gemma-2/3 but 27B does), so the
# exportable tiny variants set it to head_dim. The default one is the refusal case.
GGUF_OVERRIDES = {"gemma2": {"query_pre_attn_scalar": 16}, "gemma3_text": {"query_pre_attn_scalar": 16}}
ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3"]


def bidir_folder(arch: str, root: Path, seed: int = 0, **overrides) -> Path:
    """`l2v enable-bidir` of a tiny random `arch` model (with config overrides): a plain model folder."""
    import torch
    from transformers import AutoModelForCausalLM

    from l2v_cli.modeling.tiny import tiny_config
    from l2v_cli.stages.enable_bidir import enable_bidir

    src, out = root / f"{arch}-causal", root / f"{arch}-bidir"
    if out.exists():
        return out
    cfg, tok = tiny_config(arch)
    for k, v in {**GGUF_OVERRIDES.get(arch, {}), **overrides}.items():
        setattr(cfg, k, v)
    torch.manual_seed(seed)
    try:
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    except ValueError:
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # random norms too, so a missing (1 + w) or a swapped norm shows
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    model.save_pretrained(src)
    tok.save_pretrained(src)
    enable_bidir(str(src), out, verify=False)
    return out
