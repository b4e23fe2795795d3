"""Stage `export`: merge a trained chain into one plain encoder folder that sentence-transformers,
transformers and `l2v encode` all load — and give the same embeddings.

    export("runs/x/simcse", "runs/x/export", pooling="mean", normalize=True)

SOURCE is one of
  * a completed training-stage folder (has `stage.json`): its base model plus every adapter of the
    chain (the earlier stages' and its own `adapter/`), merged in order;
  * a checkpoint `STAGE/step-NNNNNN/`: the adapter saved in it (a folder with
    `adapter_config.json` — also what a DeepSpeed ZeRO-3 run with gathered 16-bit weights writes)
    on top of the chain that stage started from (from the stage's `stage.json`, or `stage_input`
    for a stage that has not finished); a checkpoint holding full weights (`config.json` +
    `*.safetensors`, no adapter) is exported as a model;
  * a plain bidirectional model folder (from `l2v enable-bidir`; `config.json` has
    `"is_causal": false`).

OUT holds (written into a temp folder, renamed into place at the end: all or nothing)
  config.json, model*.safetensors   the DECODER only (no LM head), `"is_causal": false`, in `dtype`,
                                    sharded at `max_shard_size`; `AutoModel.from_pretrained(OUT)` is
                                    bidirectional (checked by a probe after a plain reload: `verify`)
  tokenizer files                   WITHOUT a chat template, padding on the right (see below)
  modules.json                      Transformer -> Pooling (-> Normalize)
  sentence_bert_config.json         max_seq_length, do_lower_case
  1_Pooling/config.json             our pooling in sentence-transformers' terms
  config_sentence_transformers.json prompts {"query": ..., "document": ...}, default_prompt_name null
  README.md                         model card (base, chain, steps, data, pooling, how to load, eval)

Why no chat template: sentence-transformers >= 6 renders every plain text through the tokenizer's
chat template when the folder has one (it adds a "message" modality whenever
`tokenizer.chat_template` is set; see `Transformer.infer_modalities`), so an Instruct model's
folder would be embedded as "<|im_start|>system ...". The encoder was trained on plain text, so the
export drops `chat_template` from tokenizer_config.json and deletes chat_template.jinja /
chat_template.json / additional_chat_templates/. Older sentence-transformers never apply one.

A second line of defence: the files are written in the long-standing format
(`sentence_transformers.models.*` module types, `pooling_mode_*_tokens` keys, a
sentence_bert_config.json without `modality_config`), and sentence-transformers 6 pins such a
module to the text-only modality — it would not apply a chat template even if one were put back.
Only a plain HF folder (no modules.json) is wrapped. Every sentence-transformers from 2.4 reads
these files, but the embeddings are right only from 5.4.0 (ST_MIN_VERSION; see the note there).

Pooling map (ours -> sentence-transformers): mean -> mean, weighted_mean -> weightedmean,
last_token -> lasttoken, bos -> cls, eos -> lasttoken with the tokenizer made to append EOS
(its post-processor gets the EOS token; checked after saving, an L2VError if the tokenizer will
not keep it). With instructions, `include_prompt: false` excludes the prompt from pooling, as
`l2v encode --instruction` does.

Known differences, measured by tests/test_export.py (and named in the model card):
  * sentence-transformers tokenises prompt + text as ONE string, we tokenise them separately. They
    agree when no token straddles the boundary: an instruction ending in ":" is safe; one ending in
    a space ("query: ") is not (byte-level BPE merges the space into the text's first word); one
    ending in a newline is safe unless the text starts with whitespace (SmolLM2 merges "\n" + " ").
    `export` warns when it finds such a boundary (and notes the whitespace case in the card).
  * weighted_mean with a prompt: sentence-transformers keeps each text token's absolute position
    weight, we restart the weights at the text; without a prompt they agree.
  * truncation: we truncate the text only (instruction and special tokens kept), sentence-
    transformers truncates the whole sequence; they differ only for texts over max_seq_length.
  * an empty text with a prompt: sentence-transformers pools nothing (a zero vector), we pool one
    filler token (EOS).
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from l2v_cli.errors import L2VError, did_you_mean
from l2v_cli.stages.common import STAGE_FILE, Chain

DTYPE_CHOICES = ("float32", "bfloat16", "float16")
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}

# Our pooling name -> the sentence-transformers Pooling config key that is switched on.
ST_POOLING_KEYS = {
    "mean": "pooling_mode_mean_tokens",
    "weighted_mean": "pooling_mode_weightedmean_tokens",
    "last_token": "pooling_mode_lasttoken",
    "eos": "pooling_mode_lasttoken",  # + a tokenizer that appends EOS
    "bos": "pooling_mode_cls_token",  # "cls" = the first pooled token
}
_ALL_ST_POOLING_KEYS = ("pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens",
                        "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens",
                        "pooling_mode_lasttoken")

# Which sentence-transformers gives our embeddings (measured on the tiny chain of tests/test_export.py):
#   * the file format needs 2.4.0 (prompts, default_prompt_name, Pooling.include_prompt; lasttoken
#     and weightedmean pooling are older);
#   * bidirectional attention needs transformers >= 5 (config.is_causal), which sentence-transformers
#     allows from 5.2.0 on (<= 5.1.x pin transformers < 5: the model would silently run causal);
#   * 5.2.x-5.3.x strip every input (and the prompt) of surrounding whitespace before tokenising, so
#     texts with leading/trailing whitespace and prompts ending in a newline differ (cos ~0.93-0.999);
#     from 5.4.0 inputs are tokenised as given and the embeddings match ours (cos >= 0.9999).
ST_MIN_VERSION = "5.4.0"  # equal embeddings
ST_LOADS_MIN_VERSION = "5.2.0"  # loads bidirectional, but strips whitespace
ST_FORMAT_MIN_VERSION = "2.4.0"  # reads the files (with transformers 4: causal, wrong)
TRANSFORMERS_MIN_VERSION = "5.0"

_CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
_CHAT_TEMPLATE_DIRS = ("additional_chat_templates",)
STEP_RE = re.compile(r"^step-(\d{6,})$")


# --------------------------------------------------------------------------- the source


@dataclass
class StageInfo:
    """One link of the chain, for the model card."""

    stage: str  # train-mntp / train-simcse / train-supervised / adapter
    path: str  # the adapter folder
    steps: Optional[int] = None
    data: Optional[object] = None  # the stage's data.path, from its config.yaml
    extra: dict = field(default_factory=dict)  # e.g. instructions of a supervised stage


@dataclass
class ExportSource:
    kind: str  # "stage" | "checkpoint" | "model"
    path: Path
    chain: Chain
    stages: list[StageInfo]
    tokenizer_dir: Path  # where the export's tokenizer comes from

    @property
    def steps(self) -> Optional[int]:
        return self.stages[-1].steps if self.stages else None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise L2VError(f"cannot read {path}: {e}", where=str(path),
                       fix="the file is damaged; rerun the step that wrote it") from e


def _stage_data(stage_dir: Path, stage: str) -> Optional[object]:
    """The data path the stage trained on, from the recipe it saved (config.yaml)."""
    cfg = stage_dir / "config.yaml"
    section = stage.replace("train-", "")
    if not cfg.exists():
        return None
    try:
        import yaml

        d = yaml.safe_load(cfg.read_text()) or {}
        return ((d.get(section) or {}).get("data") or {}).get("path")
    except Exception:  # the card is best effort; a damaged config.yaml must not stop an export
        return None


def _stage_info(adapter: Path) -> StageInfo:
    """What the model card says about one adapter of the chain."""
    adapter = Path(adapter)
    stage_dir = adapter.parent
    m = STEP_RE.match(adapter.name)
    if m:  # a checkpoint's adapter
        stamp = stage_dir / adapter.name / "l2v_checkpoint.json"
        section = None
        if stamp.exists():
            try:
                section = json.loads(stamp.read_text()).get("config", {}).get("section")
            except (OSError, ValueError):
                section = None
        stage = f"train-{section}" if section else "adapter"
        return StageInfo(stage, str(adapter), int(m.group(1)), _stage_data(stage_dir, stage),
                         {"checkpoint": adapter.name})
    rec_path = stage_dir / STAGE_FILE
    if adapter.name == "adapter" and rec_path.exists():
        try:
            rec = json.loads(rec_path.read_text())
        except (OSError, ValueError):
            rec = {}
        stage = rec.get("stage", "adapter")
        extra = {k: v for k, v in rec.items()
                 if k not in ("stage", "base_model", "adapters", "adapter", "source", "steps")}
        return StageInfo(stage, str(adapter), rec.get("steps"), _stage_data(stage_dir, stage), extra)
    return StageInfo("adapter", str(adapter))


def _check_adapter(path: Path, what: str) -> None:
    """An adapter folder must hold its config and (non-empty) weights."""
    path = Path(path)
    if not (path / "adapter_config.json").exists():
        raise L2VError(f"adapter missing: {what} {path} has no adapter_config.json", where=str(path),
                       fix="rerun the stage that produced it, or export a run whose adapters are all present")
    weights = [path / "adapter_model.safetensors", path / "adapter_model.bin"]
    if not any(w.exists() for w in weights):
        raise L2VError(f"adapter {path} has an adapter_config.json but no adapter_model.safetensors",
                       where=str(path), fix="the save was interrupted; use another checkpoint or rerun the stage")
    st = path / "adapter_model.safetensors"
    if st.exists():
        from safetensors import safe_open

        with safe_open(str(st), "pt") as f:
            empty = [k for k in f.keys() if 0 in f.get_slice(k).get_shape()]
        if empty:
            raise L2VError(f"adapter {path} holds empty (sharded) tensors, e.g. {empty[0]}", where=str(path),
                           fix="a DeepSpeed ZeRO-3 checkpoint saved without gathering: train with "
                           "stage3_gather_16bit_weights_on_model_save: true, or consolidate it with zero_to_fp32.py")


def _locate(path: str, anchor: Path) -> str:
    """A relative path recorded in a stage.json was relative to the directory training ran in:
    try the current directory, then each folder above the stage folder (`anchor`)."""
    q = Path(path).expanduser()
    if q.is_absolute():
        return str(q)
    for base in [Path.cwd(), *anchor.parents]:
        if (base / q).exists():
            return str((base / q).absolute())
    return str(q)


def _anchored(chain: Chain, anchor: Path) -> Chain:
    base = chain.base_model
    if not Path(base).expanduser().is_absolute() and (Path(base).exists() or "/" in base or base.startswith(".")):
        base = _locate(base, anchor)
    return Chain(base, [_locate(a, anchor) for a in chain.adapters], chain.source)


def _plain_model_chain(p: Path) -> Chain:
    from l2v_cli.stages.common import read_chain

    cfg = _read_json(p / "config.json")
    if cfg.get("is_causal", True) is not False and (cfg.get("text_config") or {}).get("is_causal", True) is not False:
        raise L2VError(f"{p} is a causal model (its config.json has no \"is_causal\": false)", where=str(p),
                       fix=f"make it bidirectional first: `l2v enable-bidir {p} -o BIDIR`, then export BIDIR "
                       "(or export a trained stage folder)")
    if not any(p.glob("*.safetensors")):
        raise L2VError(f"no model weights (*.safetensors) in {p}", where=str(p),
                       fix="export a complete model folder, a stage folder or a checkpoint")
    return read_chain(p)


def resolve_source(source: str | Path, stage_input: str | Path | None = None) -> ExportSource:
    """Work out what SOURCE is and the chain behind it; L2VError for anything else."""
    from l2v_cli.stages.common import read_chain

    p = Path(source).expanduser()
    if not p.exists():
        raise L2VError(f"SOURCE {p} does not exist", where=str(p),
                       fix="give a training-stage folder, a checkpoint (STAGE/step-NNNNNN) or a model folder")
    if not p.is_dir():
        raise L2VError(f"SOURCE {p} is not a folder", where=str(p),
                       fix="give a training-stage folder, a checkpoint (STAGE/step-NNNNNN) or a model folder")
    p = p.absolute()
    if p.name == "adapter" and (p / "adapter_config.json").exists() and (p.parent / STAGE_FILE).exists():
        p = p.parent  # STAGE/adapter given: export the stage it belongs to

    # 1. a completed training stage
    if (p / STAGE_FILE).exists():
        chain = _anchored(read_chain(p), p)
        for i, a in enumerate(chain.adapters):
            _check_adapter(Path(a), f"adapter {i + 1}/{len(chain.adapters)} of the chain:")
        stages = [_stage_info(Path(a)) for a in chain.adapters]
        return ExportSource("stage", p, chain, stages, _tok_dir(chain))

    # 2. a checkpoint inside a stage
    if STEP_RE.match(p.name) or p.name.startswith("checkpoint-"):
        if not (p / "l2v_checkpoint.json").exists():
            raise L2VError(f"{p} is an incomplete checkpoint (no l2v_checkpoint.json: its save did not finish)",
                           where=str(p), fix="export a complete checkpoint (step-NNNNNN) or the finished stage")
        stage_dir = p.parent
        if (p / "adapter_config.json").exists():
            _check_adapter(p, "checkpoint")
            if (stage_dir / STAGE_FILE).exists():
                rec = _read_json(stage_dir / STAGE_FILE)
                prior = _anchored(Chain(rec["base_model"], list(rec["adapters"]), rec.get("source")), stage_dir)
            elif stage_input is not None:
                prior = _chain_of_input(stage_input)
            elif (stage_dir / "input.json").exists():  # recorded when the stage started
                prior = _chain_of_input(_read_json(stage_dir / "input.json")["input"])
            else:
                raise L2VError(f"the stage {stage_dir} has not finished, so the chain its checkpoint "
                               f"{p.name} builds on is not recorded", where=str(p),
                               fix="pass --stage-input with the INPUT the stage was trained from "
                               "(the model or previous stage folder)")
            for i, a in enumerate(prior.adapters):
                _check_adapter(Path(a), f"adapter {i + 1}/{len(prior.adapters) + 1} of the chain:")
            chain = Chain(prior.base_model, prior.adapters + [str(p)], prior.source)
            stages = [_stage_info(Path(a)) for a in chain.adapters]
            return ExportSource("checkpoint", p, chain, stages, p if _has_tokenizer(p) else _tok_dir(prior))
        if (p / "config.json").exists() and any(p.glob("*.safetensors")):
            chain = _plain_model_chain(p)  # full weights (e.g. gathered ZeRO-3 model.safetensors)
            return ExportSource("checkpoint", p, chain, [], p if _has_tokenizer(p) else _tok_dir(chain))
        raise L2VError(f"checkpoint {p} holds neither an adapter (adapter_config.json) nor model weights",
                       where=str(p), fix="a DeepSpeed ZeRO-3 checkpoint needs stage3_gather_16bit_weights_on_model_save: "
                       "true to be exportable; or export the finished stage")

    # 3. an unfinished stage folder
    if any(STEP_RE.match(c.name) for c in p.glob("step-*")) and not (p / "config.json").exists():
        raise L2VError(f"{p} is an unfinished training stage (no {STAGE_FILE})", where=str(p),
                       fix=f"finish it (rerun its command with --resume), or export one of its checkpoints: "
                       f"`l2v export {p}/step-NNNNNN --stage-input INPUT -o OUT`")

    # 4. a plain model folder
    if (p / "config.json").exists():
        chain = _plain_model_chain(p)
        return ExportSource("model", p, chain, [], p)

    raise L2VError(f"{p} is not a training run, checkpoint or model folder (no {STAGE_FILE}, "
                   "adapter_config.json or config.json)", where=str(p),
                   fix="give a finished stage folder (e.g. runs/x/simcse), a checkpoint (STAGE/step-NNNNNN) "
                   "or a bidirectional model folder from `l2v enable-bidir`")


def _chain_of_input(stage_input) -> Chain:
    from l2v_cli.stages.common import read_chain

    q = Path(stage_input).expanduser()
    if not q.is_dir():  # a MODEL spec (alias, tiny-<arch>, .gguf): its local folder
        from l2v_cli.modeling.sources import looks_like_path, resolve_model

        if not looks_like_path(str(stage_input)):
            q = resolve_model(str(stage_input)).path
    if not q.is_dir():
        raise L2VError(f"--stage-input {q} is not a folder", where="--stage-input",
                       fix="give the model or previous stage folder the stage was trained from")
    return _anchored(read_chain(q.absolute()), q.absolute())


def _has_tokenizer(p: Path) -> bool:
    return (p / "tokenizer_config.json").exists() or (p / "tokenizer.json").exists()


def _tok_dir(chain: Chain) -> Path:
    for a in reversed(chain.adapters):
        if _has_tokenizer(Path(a)):
            return Path(a)
    return Path(chain.base_model)


# --------------------------------------------------------------------------- options


def _check_options(dtype: str, pooling: str, max_shard_size, max_seq_length: int) -> tuple[str, str]:
    from l2v_cli.encoding import check_pooling

    dtype = _DTYPE_ALIASES.get(dtype, dtype)
    if dtype not in DTYPE_CHOICES:
        raise L2VError(f"unknown dtype {dtype!r}", where="--dtype", fix=did_you_mean(dtype, DTYPE_CHOICES))
    check_pooling(pooling)
    shard = max_shard_size
    if isinstance(shard, str) and shard.strip().isdigit():
        shard = int(shard.strip())
    if isinstance(shard, int):
        size = shard
    else:
        from huggingface_hub.serialization._base import parse_size_to_int

        try:
            size = parse_size_to_int(str(shard))
        except (ValueError, TypeError) as e:
            raise L2VError(f"cannot read max shard size {max_shard_size!r}: {e}", where="--max-shard-size",
                           fix="give a size like 5GB, 500MB or a number of bytes") from None
    if size <= 0:
        raise L2VError(f"max shard size must be positive, got {max_shard_size!r}", where="--max-shard-size",
                       fix="give a size like 5GB or 500MB")
    if not isinstance(max_seq_length, int) or max_seq_length < 1:
        raise L2VError(f"max_seq_length must be a positive integer, got {max_seq_length!r}",
                       where="--max-seq-length", fix="use e.g. 512")
    return dtype, shard


# --------------------------------------------------------------------------- loading and merging


def _apply_adapter(model, path: Path):
    """Load one saved LoRA adapter onto `model`, check every saved tensor found its place, merge it."""
    import warnings

    import torch.distributed.tensor  # noqa: F401  (peft on torch 2.13 can miss it otherwise: FINDINGS)
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict

    _resize_for(model, path)
    _resize_to_saved_embeddings(model, path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pm = PeftModel.from_pretrained(model, str(path))
    except Exception as e:  # peft's errors for a foreign adapter are long; keep the first line
        raise L2VError(f"adapter {path} does not fit the base model: {str(e).splitlines()[0][:300]}",
                       where=str(path), fix="the chain's base model is not the one this adapter was trained on") from e
    st = Path(path) / "adapter_model.safetensors"
    if st.exists():
        from safetensors import safe_open

        with safe_open(str(st), "pt") as f:
            saved = set(f.keys())
        loaded = set(get_peft_model_state_dict(pm).keys())
        missing = sorted(saved - loaded)
        if missing:
            raise L2VError(f"{len(missing)} of the {len(saved)} tensors of adapter {path} match no module of the "
                           f"base model (e.g. {missing[0]})", where=str(path),
                           fix="the chain's base model is not the one this adapter was trained on")
    return pm.merge_and_unload()


def _resize_for(model, adapter: Path) -> None:
    """A stage that added tokens (MNTP's `mask_token: mask`) saved a bigger tokenizer: grow to match."""
    if not _has_tokenizer(adapter):
        return
    from transformers import AutoTokenizer

    try:
        n = len(AutoTokenizer.from_pretrained(adapter))
    except Exception:
        return
    rows = model.get_input_embeddings().weight.shape[0]
    if n > rows:
        model.resize_token_embeddings(n)


def _resize_to_saved_embeddings(model, adapter: Path) -> None:
    """An adapter that carries resized embedding weights (peft saves them when the vocabulary
    grew) needs the model grown first, even when no tokenizer was saved beside it (checkpoints)."""
    st = Path(adapter) / "adapter_model.safetensors"
    if not st.exists():
        return
    emb = model.get_input_embeddings()
    name = next((n for n, m in model.named_modules() if m is emb), None)
    if not name:
        return
    from safetensors import safe_open

    rows = emb.weight.shape[0]
    with safe_open(str(st), "pt") as f:
        for k in f.keys():
            if k.endswith(f"{name}.weight") or k.endswith(f"{name}.base_layer.weight"):
                n = f.get_slice(k).get_shape()[0]
                if n > rows:
                    model.resize_token_embeddings(n)
                    return


def _load_merged(src: ExportSource):
    """The base model (with its LM head: the adapters were trained on that wrapper) + merged chain, fp32."""
    from l2v_cli.modeling.loading import load_model

    loaded = load_model(src.chain.base_model, dtype="float32", bidirectional=True, verify=False,
                        lm_head=True, device="cpu")
    model = loaded.model
    for a in src.chain.adapters:
        model = _apply_adapter(model, Path(a))
    return model, loaded


def _decoder(model):
    """The transformer body without the LM head (what `AutoModel` loads)."""
    from l2v_cli.encoding.encoder import backbone_of

    return backbone_of(model)


# --------------------------------------------------------------------------- tokenizer


def _load_tokenizer(path: Path):
    from l2v_cli.modeling.loading import load_tokenizer

    return load_tokenizer(Path(path))


def _strip_chat_template(folder: Path) -> list[str]:
    """Remove every chat template from a saved tokenizer folder; returns what was removed."""
    removed = []
    for name in _CHAT_TEMPLATE_FILES:
        if (folder / name).exists():
            (folder / name).unlink()
            removed.append(name)
    for name in _CHAT_TEMPLATE_DIRS:
        if (folder / name).exists():
            shutil.rmtree(folder / name)
            removed.append(name + "/")
    cfg_path = folder / "tokenizer_config.json"
    if cfg_path.exists():
        cfg = json.loads(cfg_path.read_text())
        if "chat_template" in cfg:
            del cfg["chat_template"]
            removed.append("tokenizer_config.json:chat_template")
        cfg["padding_side"] = "right"
        for k in ("is_local", "local_files_only"):  # load-time flags transformers 5 writes back
            cfg.pop(k, None)
        cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    return removed


def _append_eos_post_processor(folder: Path, tok) -> None:
    """Make the saved fast tokenizer append EOS after every text (for `eos` pooling)."""
    eos, eos_id = tok.eos_token, tok.eos_token_id
    tj = folder / "tokenizer.json"
    if not tj.exists():
        raise L2VError("pooling 'eos' needs a fast tokenizer (tokenizer.json) to append EOS in "
                       "sentence-transformers", where="--pooling", fix="export with --pooling last_token or mean")
    d = json.loads(tj.read_text())
    eos_item = {"SpecialToken": {"id": eos, "type_id": 0}}
    special = {eos: {"id": eos, "ids": [eos_id], "tokens": [eos]}}

    def patch_template(pp: dict) -> None:
        for key in ("single", "pair"):
            seq = pp.get(key) or []
            if not (seq and seq[-1] == eos_item):
                seq.append(eos_item)
            pp[key] = seq
        pp.setdefault("special_tokens", {}).update(special)

    pp = d.get("post_processor")
    template = {"type": "TemplateProcessing",
                "single": [{"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {}}
    if pp is None:
        patch_template(template)
        d["post_processor"] = template
    elif pp.get("type") == "TemplateProcessing":
        patch_template(pp)
    elif pp.get("type") == "Sequence":
        inner = [x for x in pp.get("processors", []) if x.get("type") == "TemplateProcessing"]
        if inner:
            patch_template(inner[0])
        else:
            patch_template(template)
            pp.setdefault("processors", []).append(template)
    else:  # e.g. ByteLevel (offsets only): keep it, then add EOS
        patch_template(template)
        d["post_processor"] = {"type": "Sequence", "processors": [pp, template]}
    tj.write_text(json.dumps(d, ensure_ascii=False))


def _write_tokenizer(tmp: Path, tok_dir: Path, pooling: str) -> dict:
    """Save the tokenizer without a chat template; returns facts for the card and checks."""
    tok = _load_tokenizer(tok_dir)
    had_template = getattr(tok, "chat_template", None) is not None
    try:
        tok.chat_template = None
    except Exception:
        pass
    tok.padding_side = "right"
    if pooling == "eos" and tok.eos_token_id is None:
        raise L2VError("pooling 'eos' needs a tokenizer with an EOS token, and this one has none",
                       where="--pooling", fix="export with --pooling mean or last_token")
    tok.save_pretrained(tmp)
    removed = _strip_chat_template(tmp)
    from l2v_cli.encoding.encoder import special_affixes

    prefix, suffix = special_affixes(tok)
    if pooling == "eos" and not (suffix and suffix[-1] == tok.eos_token_id):
        _append_eos_post_processor(tmp, tok)

    # Check what a plain AutoTokenizer (what sentence-transformers uses) makes of the folder.
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(tmp)
    if getattr(plain, "chat_template", None) is not None:
        raise L2VError("the exported tokenizer still carries a chat template", where=str(tmp),
                       fix="please report this tokenizer type")
    if pooling == "eos":
        p2, s2 = special_affixes(plain)
        if not (s2 and s2[-1] == plain.eos_token_id):
            raise L2VError(f"this tokenizer ({type(plain).__name__}) will not append EOS after a reload, so "
                           "'eos' pooling cannot be reproduced in sentence-transformers", where="--pooling",
                           fix="export with --pooling last_token (identical for texts ending in EOS) or mean")
    return {"had_chat_template": had_template or bool(removed), "removed": removed,
            "prefix": prefix, "suffix": suffix, "tokenizer": tok}


def _boundary_check(tok, instruction: str) -> tuple[bool, bool]:
    """Does tokenising instruction + text as ONE string (what sentence-transformers does) differ from
    tokenising them separately (what `l2v encode` does)? (for ordinary texts, for texts that start
    with whitespace)."""
    ins = tok(instruction, add_special_tokens=False)["input_ids"]

    def differs(probes):
        return any(ins + tok(t, add_special_tokens=False)["input_ids"]
                   != tok(instruction + t, add_special_tokens=False)["input_ids"] for t in probes)

    return (differs(["hello world", "The cat sat.", "What is 2 + 2?", "42 apples", "Hello", "'quoted'"]),
            differs(["  two spaces", " one space", "\nnew line", "\tTab"]))


# --------------------------------------------------------------------------- sentence-transformers files


def _write_st_files(tmp: Path, *, dim: int, pooling: str, normalize: bool, max_seq_length: int,
                    query_instruction: Optional[str], document_instruction: Optional[str]) -> None:
    import torch
    import transformers

    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (tmp / "2_Normalize").mkdir()
    _dump(tmp / "modules.json", modules)
    _dump(tmp / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False})
    pool_cfg = {"word_embedding_dimension": dim}
    pool_cfg.update({k: k == ST_POOLING_KEYS[pooling] for k in _ALL_ST_POOLING_KEYS})
    pool_cfg["include_prompt"] = not (query_instruction or document_instruction)
    (tmp / "1_Pooling").mkdir()
    _dump(tmp / "1_Pooling" / "config.json", pool_cfg)
    _dump(tmp / "config_sentence_transformers.json", {
        # The version these files are written for (not the installed one): an older
        # sentence-transformers warns that it is older, which is the right warning.
        "__version__": {"sentence_transformers": ST_MIN_VERSION, "transformers": transformers.__version__,
                        "pytorch": torch.__version__.split("+")[0]},
        "model_type": "SentenceTransformer",
        "prompts": {"query": query_instruction or "", "document": document_instruction or ""},
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    })


def _dump(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def _update_config(tmp: Path, l2v_block: dict) -> None:
    path = tmp / "config.json"
    cfg = json.loads(path.read_text())
    cfg["is_causal"] = False
    old = cfg.get("l2v") or {}
    cfg["l2v"] = {**{k: v for k, v in old.items() if k in ("source", "attn_implementation")}, **l2v_block}
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------- verification


def _verify_reload(folder: Path) -> object:
    """Reload OUT with plain transformers AutoModel and prove it is bidirectional."""
    import warnings

    import torch
    from transformers import AutoModel

    from l2v_cli.modeling.bidir import probe_bidirectional

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = AutoModel.from_pretrained(folder, dtype=torch.float32)
    plain.eval()
    try:
        causal = getattr(plain.config, "is_causal", True) is not False
        report = probe_bidirectional(plain)
        if causal or not report.ok:
            failed = ["config.is_causal"] if causal else report.failed()
            raise L2VError(f"the exported model is not bidirectional when reloaded with plain "
                           f"AutoModel.from_pretrained (failed checks: {', '.join(failed)}); nothing was written",
                           where="verify of the exported folder",
                           fix="export with attn_implementation eager pinned (`l2v enable-bidir --attn-implementation "
                           "eager` on the base), or report this architecture")
        return report
    finally:
        del plain
        gc.collect()


# --------------------------------------------------------------------------- model card


def _find_eval(src: ExportSource) -> Optional[tuple[Path, object]]:
    cands = [src.path / "eval.json", src.path.parent / "eval.json"]
    if src.kind == "checkpoint":
        cands.append(src.path.parent.parent / "eval.json")
    for c in cands:
        if c.is_file():
            try:
                return c, json.loads(c.read_text())
            except (OSError, ValueError):
                continue
    return None


def _eval_table(ev) -> str:
    data = ev.get("results", ev) if isinstance(ev, dict) else ev
    rows = []
    if isinstance(data, dict):
        for task, v in data.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                rows.append((task, "score", v))
            elif isinstance(v, dict):
                for metric, x in v.items():
                    if isinstance(x, (int, float)) and not isinstance(x, bool):
                        rows.append((task, metric, x))
    if not rows:
        return "```json\n" + json.dumps(ev, indent=2)[:4000] + "\n```\n"
    out = "| task | metric | value |\n| --- | --- | --- |\n"
    for task, metric, x in rows:
        out += f"| {task} | {metric} | {x:.4g} |\n" if isinstance(x, float) else f"| {task} | {metric} | {x} |\n"
    return out


def _base_name(chain: Chain) -> tuple[str, Optional[str]]:
    """(readable base-model name, hub id or None)."""
    s = chain.source or {}
    hub = s.get("hub_id") or (s.get("spec") if s.get("kind") == "hub" else None)
    name = s.get("alias") or hub or s.get("spec") or s.get("origin") or chain.base_model
    return str(name), hub


def _model_card(out_name: str, src: ExportSource, *, pooling: str, normalize: bool, dtype: str,
                max_seq_length: int, query_instruction, document_instruction, tok_facts: dict,
                warnings_: list[str], recipe=None) -> str:
    base, hub = _base_name(src.chain)
    front = ["---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity", "tags:",
             "- sentence-transformers", "- feature-extraction", "- sentence-similarity", "- llm2vec", "- l2v"]
    if hub:
        front.append(f"base_model: {hub}")
    front.append("---")
    lines = ["\n".join(front), "", f"# {out_name}", "",
             f"A text encoder made from the decoder-only LLM **{base}** with the LLM2Vec method "
             "(bidirectional attention, then LoRA training stages merged into the weights), exported by "
             "`l2v export`.", ""]
    lines += ["## Model", "", "| | |", "| --- | --- |",
              f"| base model | `{base}` |",
              f"| base folder | `{src.chain.base_model}` |"]
    if src.chain.source:
        lines.append(f"| base source | `{json.dumps(src.chain.source)}` |")
    lines += [f"| exported from | `{src.path}` ({src.kind}) |",
              "| attention | bidirectional (`\"is_causal\": false` in config.json) |",
              f"| pooling | `{pooling}` |", f"| normalized | {'yes' if normalize else 'no'} |",
              f"| weights | {dtype}, safetensors, decoder only (no LM head) |",
              f"| max sequence length | {max_seq_length} |",
              f"| query instruction | {json.dumps(query_instruction) if query_instruction else '(none)'} |",
              f"| document instruction | {json.dumps(document_instruction) if document_instruction else '(none)'} |"]
    if recipe is not None and getattr(recipe, "name", None):
        lines.append(f"| recipe | `{recipe.name}` |")
    lines.append("")
    lines += ["## Training chain", ""]
    if src.stages:
        lines += ["| # | stage | steps | data | adapter |", "| --- | --- | --- | --- | --- |"]
        for i, s in enumerate(src.stages, 1):
            data = json.dumps(s.data) if s.data is not None else "-"
            steps = s.steps if s.steps is not None else "-"
            lines.append(f"| {i} | {s.stage} | {steps} | {data} | `{s.path}` |")
        instr = [s.extra.get("instructions") for s in src.stages if s.extra.get("instructions")]
        if instr:
            lines += ["", "Instructions used in supervised training:", "",
                      "```json", json.dumps(instr[-1], indent=2, ensure_ascii=False), "```"]
    else:
        lines.append("No training stages: the bidirectional base model as it is (enable-bidir only).")
    lines.append("")
    prompt = ', prompt_name="query"' if query_instruction else ""
    lines += ["## Usage", "", "### sentence-transformers (>= " + ST_MIN_VERSION + ", with transformers >= "
              + TRANSFORMERS_MIN_VERSION + ")", "", "```python",
              "from sentence_transformers import SentenceTransformer", "",
              f'model = SentenceTransformer("{out_name}")',
              f'queries = model.encode(["how do plants make food?"]{prompt})',
              'docs = model.encode(["Photosynthesis turns light into chemical energy."])',
              "print(model.similarity(queries, docs))", "```", ""]
    pool_code = {
        "mean": "emb = (h * m).sum(1) / m.sum(1)",
        "weighted_mean": "w = m * m.cumsum(1)\nemb = (h * w).sum(1) / w.sum(1)",
        "last_token": "last = mask.sum(1) - 1\nemb = h[torch.arange(len(h)), last]",
        "eos": "last = mask.sum(1) - 1  # the tokenizer appends EOS\nemb = h[torch.arange(len(h)), last]",
        "bos": "emb = h[:, 0]",
    }[pooling]
    lines += ["### transformers", "", "```python", "import torch",
              "from transformers import AutoModel, AutoTokenizer", "",
              f'tok = AutoTokenizer.from_pretrained("{out_name}")  # pads on the right',
              f'model = AutoModel.from_pretrained("{out_name}")      # bidirectional: config.is_causal = False',
              'batch = tok(["a sentence", "another one"], padding=True, return_tensors="pt")',
              "with torch.no_grad():", "    h = model(**batch).last_hidden_state",
              'mask = batch["attention_mask"]; m = mask.unsqueeze(-1).float()', pool_code]
    if normalize:
        lines.append("emb = torch.nn.functional.normalize(emb, dim=-1)")
    lines += ["```", ""]
    if query_instruction:
        lines += ["With an instruction, prepend it to the text and leave its tokens out of the pooling "
                  "(sentence-transformers does this from `prompts` + `include_prompt: false`).", ""]
    norm = " --normalize" if normalize else ""
    instr_flag = f" --instruction {json.dumps(query_instruction)}" if query_instruction else ""
    lines += ["### l2v", "", "```bash",
              f"l2v encode {out_name} --pooling {pooling}{norm} -i texts.txt -o emb.npy",
              f"l2v encode {out_name} --pooling {pooling}{norm}{instr_flag} -i queries.txt -o q.npy" if instr_flag else None,
              "```", "", "```python", "from l2v_cli.encoding import Encoder",
              f'enc = Encoder.from_pretrained("{out_name}", pooling="{pooling}")',
              f'emb = enc.encode(["a sentence"]{", normalize=True" if normalize else ""})', "```", ""]
    lines += ["### MTEB", "", "```python", "import mteb", "from sentence_transformers import SentenceTransformer", "",
              f'model = SentenceTransformer("{out_name}")',
              'tasks = mteb.get_tasks(tasks=["STSBenchmark", "SciFact"])',
              "results = mteb.evaluate(model, tasks)          # mteb >= 2",
              "# mteb 1.x: mteb.MTEB(tasks=tasks).run(model, output_folder=\"results\")", "```", "",
              "or from the shell: `mteb run -m PATH/TO/THIS/FOLDER -t STSBenchmark --output-folder results` "
              "(or `l2v eval`).", ""]
    lines += ["## Evaluation", ""]
    ev = _find_eval(src)
    if ev is not None:
        lines += [f"From `{ev[0]}`:", "", _eval_table(ev[1])]
    else:
        lines += ["| task | metric | value |", "| --- | --- | --- |", "| _not evaluated yet_ | | |", "",
                  "Run `l2v eval` on this folder (or MTEB, above) and fill this in.", ""]
    lines += ["## Notes", "",
              f"* Needs sentence-transformers >= {ST_MIN_VERSION} with transformers >= {TRANSFORMERS_MIN_VERSION}: "
              "bidirectional attention comes from `\"is_causal\": false` in config.json, which older transformers "
              "ignore (the model would run causal and give different embeddings).",
              "* The tokenizer has no chat template on purpose: sentence-transformers >= 6 would otherwise wrap "
              "every text in it" + (" (the source model had one; it was removed)." if tok_facts.get("had_chat_template")
                                     else "."),
              "* sentence-transformers tokenises prompt + text as one string; `l2v encode --instruction` tokenises "
              "them separately. They agree when the instruction ends in \":\"; not when it ends in a space; with a "
              "newline, not for texts that start with whitespace. An empty text with a prompt is a zero vector "
              "in sentence-transformers.",
              f"* sentence-transformers {ST_LOADS_MIN_VERSION}-5.3 strip whitespace around texts and prompts before "
              f"tokenising, so texts with leading/trailing whitespace differ there; use >= {ST_MIN_VERSION}.",
              "* A bfloat16/float16 export loads in that dtype (transformers 5 default); on a CPU without fast "
              "bf16 pass `model_kwargs={\"dtype\": \"float32\"}` to SentenceTransformer."]
    if pooling == "eos":
        lines.append("* `eos` pooling: the tokenizer appends the EOS token to every text and the last token is pooled.")
    if pooling == "weighted_mean" and (query_instruction or document_instruction):
        lines.append("* weighted_mean with a prompt: sentence-transformers weights text tokens by their absolute "
                     "position (prompt included); `l2v encode` restarts the weights at the text.")
    for w in warnings_:
        lines.append(f"* Warning: {w}")
    return "\n".join(x for x in lines if x is not None) + "\n"


# --------------------------------------------------------------------------- the stage


@dataclass
class ExportReport:
    out: Path
    source_kind: str
    chain: Chain
    dtype: str
    pooling: str
    normalize: bool
    files: list[str]
    warnings: list[str]
    verified: bool
    seconds: float


def _warn(msg: str) -> None:
    print(f"l2v: warning: {msg}", file=sys.stderr, flush=True)


def export(source: str | Path, out: str | Path, *, dtype: str = "float32", pooling: str = "mean",
           normalize: bool = False, max_shard_size: str | int = "5GB", query_instruction: str | None = None,
           document_instruction: str | None = None, overwrite: bool = False, recipe=None,
           max_seq_length: int = 512, stage_input: str | Path | None = None, verify: bool = True,
           report: bool = False):
    """Export SOURCE (stage folder, checkpoint or bidirectional model folder) to OUT; see the module doc.

    Returns OUT (a Path), or an `ExportReport` with `report=True`. L2VError on bad input; on any
    failure OUT is not created (or, with `overwrite`, the previous OUT is left as it was).
    """
    import time

    t0 = time.perf_counter()
    dtype, shard = _check_options(dtype, pooling, max_shard_size, max_seq_length)
    for name, ins in (("--query-instruction", query_instruction), ("--document-instruction", document_instruction)):
        if ins is not None and not isinstance(ins, str):
            raise L2VError(f"{name} must be a string, got {type(ins).__name__}", where=name)
    query_instruction = query_instruction or None
    document_instruction = document_instruction or None
    out = Path(out).expanduser().absolute()
    from l2v_cli.utils.atomic import atomic_dir, check_writable_parent

    if (out.exists() or out.is_symlink()) and not overwrite:
        raise L2VError(f"OUT {out} already exists", where=str(out),
                       fix="pass --overwrite to replace it, or choose another path")
    src = resolve_source(source, stage_input)
    if out == src.path or src.path in out.parents:
        raise L2VError(f"OUT {out} is inside SOURCE {src.path}", where=str(out), fix="write the export elsewhere")
    check_writable_parent(out)

    import torch
    import transformers

    from l2v_cli import __version__
    from l2v_cli.utils.device import DTYPES

    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:
        pass

    model, loaded = _load_merged(src)
    decoder = _decoder(model)
    dim = int(decoder.get_input_embeddings().weight.shape[1])
    warnings_: list[str] = []
    with atomic_dir(out, overwrite=overwrite) as tmp:
        tok_facts = _write_tokenizer(tmp, src.tokenizer_dir, pooling)
        tok = tok_facts.pop("tokenizer")
        rows = decoder.get_input_embeddings().weight.shape[0]
        if len(tok) > rows:
            raise L2VError(f"the tokenizer has {len(tok)} tokens but the model only {rows} embeddings",
                           where=str(src.tokenizer_dir), fix="the tokenizer does not belong to this chain")
        for name, ins in (("query", query_instruction), ("document", document_instruction)):
            if not ins:
                continue
            ordinary, leading_ws = _boundary_check(tok, ins)
            if ordinary:
                msg = (f"the {name} instruction {ins!r} merges with the text's first token when tokenised as one "
                       "string (as sentence-transformers does): its embeddings will differ from `l2v encode "
                       "--instruction`; end the instruction with a non-space character such as ':'")
                warnings_.append(msg)
                _warn(msg)
            elif leading_ws:
                warnings_.append(f"the {name} instruction {ins!r} merges with leading whitespace of a text when "
                                 "tokenised as one string: for texts that start with whitespace sentence-transformers "
                                 "differs from `l2v encode --instruction` (strip such texts, or end the instruction "
                                 "with ':')")
        decoder.to(DTYPES[dtype])
        decoder.config.is_causal = False
        decoder.save_pretrained(tmp, max_shard_size=shard)
        stage_recs = [{"stage": s.stage, "steps": s.steps, "adapter": s.path} for s in src.stages]
        _update_config(tmp, {
            "version": __version__, "stage": "export", "exported_from": str(src.path), "source_kind": src.kind,
            "base_model": src.chain.base_model, "chain": stage_recs, "pooling": pooling, "normalize": normalize,
            "query_instruction": query_instruction, "document_instruction": document_instruction, "dtype": dtype,
            "max_seq_length": max_seq_length,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "transformers": transformers.__version__, "torch": torch.__version__.split("+")[0]})
        _write_st_files(tmp, dim=dim, pooling=pooling, normalize=normalize, max_seq_length=max_seq_length,
                        query_instruction=query_instruction, document_instruction=document_instruction)
        del model, decoder, loaded
        gc.collect()
        if verify:
            _verify_reload(tmp)
        card = _model_card(out.name, src, pooling=pooling, normalize=normalize, dtype=dtype,
                           max_seq_length=max_seq_length, query_instruction=query_instruction,
                           document_instruction=document_instruction, tok_facts=tok_facts,
                           warnings_=warnings_, recipe=recipe)
        (tmp / "README.md").write_text(card)
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
    if not report:
        return out
    return ExportReport(out=out, source_kind=src.kind, chain=src.chain, dtype=dtype, pooling=pooling,
                        normalize=normalize, files=files, warnings=warnings_, verified=verify,
                        seconds=time.perf_counter() - t0)


def export_from_recipe(recipe, source: str | Path, out: str | Path, *, overwrite: bool = False,
                       stage_input: str | Path | None = None) -> Path:
    """`export` with the settings of a recipe's `export` section (what `l2v run` uses)."""
    e = recipe.export
    max_len = getattr(getattr(recipe, "eval", None), "max_length", 512) or 512
    if "gguf" in (getattr(e, "formats", None) or ["st"]):  # + llama.cpp file(s): l2v_cli/gguf/export.py
        from l2v_cli.gguf.export import export_gguf

        if "st" not in e.formats:
            raise L2VError("export.formats in a recipe must include st (eval and the report read that folder)",
                           where="export.formats", fix="use [st, gguf]")
        return export_gguf(source, out, formats=e.formats, gguf_types=e.gguf_types, pooling=e.pooling,
                           normalize=e.normalize, query_instruction=e.query_instruction,
                           document_instruction=e.document_instruction, overwrite=overwrite, dtype=e.dtype,
                           max_shard_size=e.max_shard_size, recipe=recipe, max_seq_length=max_len,
                           stage_input=stage_input).out
    return export(source, out, dtype=e.dtype, pooling=e.pooling, normalize=e.normalize,
                  max_shard_size=e.max_shard_size, query_instruction=e.query_instruction,
                  document_instruction=e.document_instruction, overwrite=overwrite, recipe=recipe,
                  max_seq_length=max_len, stage_input=stage_input)


__all__ = ["export", "export_from_recipe", "resolve_source", "ExportSource", "ExportReport", "StageInfo",
           "ST_MIN_VERSION", "ST_LOADS_MIN_VERSION", "ST_FORMAT_MIN_VERSION", "ST_POOLING_KEYS", "DTYPE_CHOICES"]
