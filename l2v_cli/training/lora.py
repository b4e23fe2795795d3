"""LoRA on any architecture (peft), and the adapter chain: merge earlier stages, add a fresh adapter."""

from __future__ import annotations

from pathlib import Path

from l2v_cli.errors import L2VError


def add_lora(model, lora, gradient_checkpointing: bool = False, seed: int = 42):
    """Wrap `model` with a fresh LoRA adapter from a recipe `LoraConfig`.

    Seeded: the adapter's random init must not depend on what ran earlier in the process
    (otherwise two runs of one recipe differ, and so would a run and its resumed twin).
    """
    import torch.distributed.tensor  # noqa: F401  (peft on torch 2.13 can miss it otherwise: FINDINGS)
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed

    set_seed(seed)
    targets = lora.target_modules
    target = "all-linear" if targets == ["all-linear"] else list(targets)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                     target_modules=target, bias="none")
    try:
        return get_peft_model(model, cfg)
    except ValueError as e:
        raise L2VError(f"LoRA target modules {targets} do not match this model: {str(e).splitlines()[0]}",
                       where="lora.target_modules", fix="use ['all-linear'] or the model's projection names") from e


def merge_adapters(model, adapters: list[str | Path]):
    """Apply each saved adapter in order and merge it into the weights (the paper's stage chain)."""
    from peft import PeftModel

    for path in adapters:
        if not (Path(path) / "adapter_config.json").exists():
            raise L2VError(f"adapter missing: {path} has no adapter_config.json", where=str(path),
                           fix="rerun the stage that produced it (or `l2v convert` to resume the chain)")
        model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    return model


def unwrap(model):
    """The plain transformers model under DDP/DeepSpeed/peft wrappers."""
    while True:
        if hasattr(model, "module") and not hasattr(model, "config"):
            model = model.module
        elif hasattr(model, "get_base_model"):
            model = model.get_base_model()
        else:
            return model


def set_attention_dropout(model, p: float) -> None:
    """SimCSE's augmentation is dropout: set it on the config and on every attention module."""
    model.config.attention_dropout = p
    for m in model.modules():
        if isinstance(getattr(m, "attention_dropout", None), float):
            m.attention_dropout = p
