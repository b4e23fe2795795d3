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
    """Apply each saved adapter in order and merge it into the weights (the paper's stage chain).

    The one merge path: every training stage (the chain before its own adapter) and the export use
    it. A stage that grew the vocabulary (MNTP with `mask_token: mask`) saved its resized embedding
    rows in its adapter; the model is grown to that size first, so the saved rows load. Every tensor
    the adapter file holds must find its module (a foreign adapter is refused, not half-applied)."""
    for i, path in enumerate(adapters, 1):
        model = _merge_one(model, Path(path), f"adapter {i}/{len(adapters)} of the chain")
    return model


def _merge_one(model, path: Path, what: str):
    import warnings

    import torch.distributed.tensor  # noqa: F401  (peft on torch 2.13 can miss it otherwise: FINDINGS)
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict

    if not (path / "adapter_config.json").exists():
        raise L2VError(f"adapter missing: {what} {path} has no adapter_config.json", where=str(path),
                       fix="rerun the stage that produced it (or `l2v convert` to resume the chain)")
    rows = saved_vocab_size(model, path)
    if rows and rows > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(rows)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pm = PeftModel.from_pretrained(model, str(path))
    except Exception as e:  # peft's errors for a foreign adapter are long; keep the first line
        raise L2VError(f"{what} ({path}) does not fit the base model: {str(e).splitlines()[0][:300]}",
                       where=str(path), fix="the chain's base model is not the one this adapter was trained on") from e
    saved = _saved_keys(path)
    if saved:
        loaded = set(get_peft_model_state_dict(pm, save_embedding_layers=True).keys())
        missing = sorted(saved - loaded)
        if missing:
            raise L2VError(f"{len(missing)} of the {len(saved)} tensors of {what} ({path}) match no module of "
                           f"the base model (e.g. {missing[0]})", where=str(path),
                           fix="the chain's base model is not the one this adapter was trained on")
    return pm.merge_and_unload()


def _saved_keys(path: Path) -> set[str]:
    st = path / "adapter_model.safetensors"
    if not st.exists():
        return set()
    from safetensors import safe_open

    with safe_open(str(st), "pt") as f:
        return set(f.keys())


def saved_vocab_size(model, path: str | Path) -> int | None:
    """Rows of `model`'s input embedding as an adapter saved it (peft saves the embedding when the
    vocabulary grew during training), else the length of the tokenizer saved beside it, else None."""
    path = Path(path)
    emb = model.get_input_embeddings()
    name = next((n for n, m in model.named_modules() if m is emb), None)
    st = path / "adapter_model.safetensors"
    if name and st.exists():
        from safetensors import safe_open

        with safe_open(str(st), "pt") as f:
            for k in f.keys():
                if k.endswith((f"{name}.weight", f"{name}.base_layer.weight")):
                    return int(f.get_slice(k).get_shape()[0])
    if (path / "tokenizer_config.json").exists() or (path / "tokenizer.json").exists():
        try:
            from transformers import AutoTokenizer

            return len(AutoTokenizer.from_pretrained(path))
        except Exception:
            return None
    return None


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
