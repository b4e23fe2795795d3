"""Load a model + tokenizer from any MODEL spec, safely, in the dtype and attention mode asked for."""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from l2v_cli.errors import L2VError


@dataclass
class Loaded:
    model: object
    tokenizer: object
    path: Path  # the local HF folder the weights came from
    name: str  # what the user typed (alias, path, hub id)
    alias: object = None  # the ModelAlias, when MODEL was an alias


def check_safetensors(path: Path, allow_pickle: bool = False) -> None:
    """Refuse pickle-only checkpoints: unpickling a downloaded file can run arbitrary code."""
    if any(path.glob("*.safetensors")) or allow_pickle:
        return
    if any(path.glob("*.bin")) or any(path.glob("*.pt")) or any(path.glob("*.pth")):
        raise L2VError(f"{path} holds only pickle weights (.bin/.pt), which can execute code when loaded",
                       where=str(path),
                       fix="convert it to safetensors, or pass --allow-pickle if you trust its source")
    raise L2VError(f"no model weights (*.safetensors) in {path}", where=str(path),
                   fix="point MODEL at a Hugging Face model folder, a .gguf file, an alias (`l2v models`) or a hub id")


def load_tokenizer(path: Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:  # decoders often ship without one; padding is masked anyway
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


def kernel_candidates(folder: Path) -> tuple[list[str], str]:
    """The attention kernels `attn_implementation="auto"` tries, in order, and why: the kernel
    enable-bidir proved for this folder (recorded in config.json), else the model family's kernel
    (configs/families.yaml) and then eager, which every architecture has."""
    import json

    from l2v_cli.modeling.families import config_model_type, match

    try:
        cfg = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        cfg = {}
    proved = (cfg.get("l2v") or {}).get("attn_implementation")
    if proved:
        return [proved], f"the kernel enable-bidir proved for this folder ({proved})"
    fam = match(config_model_type(cfg), "config.json model_type")
    first = fam.family.attn_implementation
    return ([first] if first == "eager" else [first, "eager"]), f"the {fam.family.name} family's kernel"


def load_model(spec: str | Path, *, dtype: str = "float32", attn_implementation: str = "sdpa",
               bidirectional: bool | None = None, verify: bool = True, lm_head: bool = False,
               device: str | None = None, trust_remote_code: bool = False,
               allow_pickle: bool = False) -> Loaded:
    """Resolve `spec` (folder, .gguf, alias, hub id, tiny-<arch>) and load it.

    bidirectional: None keeps what the saved config says; True enables (and, with `verify`,
    proves) bidirectional attention; False forces causal attention.
    attn_implementation "auto": the kernels of `kernel_candidates`, the next one when a kernel
    fails the bidirectionality probe (said on stderr).
    lm_head: load the causal-LM head too (MNTP needs it; encoding does not).
    """
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from l2v_cli.modeling.bidir import ProbeFailed, enable_bidirectional, set_bidirectional
    from l2v_cli.modeling.sources import resolve_model
    from l2v_cli.utils.device import default_device, resolve_dtype

    hf_logging.disable_progress_bar()  # a per-tensor "Loading weights" bar is noise beside our own progress
    src = resolve_model(str(spec), trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    check_safetensors(src.path, allow_pickle)
    torch_dtype = resolve_dtype(dtype)
    cls = AutoModelForCausalLM if lm_head else AutoModel
    kwargs = dict(dtype=torch_dtype, trust_remote_code=trust_remote_code,
                  use_safetensors=not allow_pickle or any(src.path.glob("*.safetensors")))
    kernels = kernel_candidates(src.path)[0] if attn_implementation == "auto" else [attn_implementation]
    for i, attn in enumerate(kernels):
        model = _from_pretrained(cls, src.path, attn, kwargs, spec)
        model.to(device or default_device())
        model.eval()
        if bidirectional is True:
            try:
                enable_bidirectional(model, verify=verify)
            except ProbeFailed as e:
                if i + 1 == len(kernels):
                    raise
                print(f"l2v: attn_implementation auto: {attn} fails the bidirectionality probe ({e.what}); "
                      f"trying {kernels[i + 1]}", file=sys.stderr, flush=True)
                del model
                continue
        elif bidirectional is False:
            set_bidirectional(model, False)
        elif getattr(model.config, "is_causal", True) is False:
            set_bidirectional(model, True)  # saved as bidirectional: also clear per-module flags
        break
    tok = load_tokenizer(src.path, trust_remote_code)
    return Loaded(model=model, tokenizer=tok, path=src.path, name=str(spec), alias=src.alias)


def _from_pretrained(cls, path: Path, attn: str, kwargs: dict, spec):
    from safetensors import SafetensorError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                model = cls.from_pretrained(path, attn_implementation=attn, **kwargs)
            except ValueError as e:
                # Some architectures (e.g. Gemma-2) have no sdpa path: eager is always there.
                if attn != "sdpa" or "does not support" not in str(e):
                    raise
                model = cls.from_pretrained(path, attn_implementation="eager", **kwargs)
    except L2VError:
        raise
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        raise L2VError(f"could not load model from {path}: {str(e).splitlines()[0]}",
                       where=str(spec),
                       fix="check that the folder is a complete Hugging Face model (config.json, "
                       "*.safetensors, tokenizer files)") from e
    return model
