"""What an export starts from: SOURCE (a finished stage, a checkpoint or a bidirectional model
folder) resolved to its chain — the base model and the adapters to merge, oldest first — plus what
the model card says about each link."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from l2v_cli.errors import L2VError
from l2v_cli.stages import registry
from l2v_cli.stages.common import STAGE_FILE, Chain, chain_tokenizer_dir, has_tokenizer, read_chain

STEP_RE = re.compile(r"^step-(\d{6,})$")


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
    if not cfg.exists() or stage not in registry.NAMES:
        return None
    section = registry.get(stage).section
    try:
        import yaml

        d = yaml.safe_load(cfg.read_text()) or {}
        return ((d.get(section) or {}).get("data") or {}).get("path")
    except Exception:  # the card is best effort; a damaged config.yaml must not stop an export
        return None


def _stage_matryoshka(stage_dir: Path, stage: str) -> Optional[dict]:
    """A checkpoint's Matryoshka dims, from its stage's config.yaml (as written: may hold 'full')."""
    cfg = stage_dir / "config.yaml"
    if not cfg.exists() or stage not in registry.NAMES:
        return None
    try:
        import yaml

        d = yaml.safe_load(cfg.read_text()) or {}
        dims = ((d.get(registry.get(stage).section) or {}).get("matryoshka") or {}).get("dims")
    except Exception:  # best effort, like the card's data column
        return None
    return {"dims": list(dims)} if dims else None


def trained_dims(stages: list[StageInfo], hidden: int) -> Optional[list[int]]:
    """The Matryoshka widths of the chain's last contrastive stage ('full' = `hidden`); None when
    it trained the full width only (a later plain contrastive stage undoes an earlier Matryoshka one)."""
    for s in reversed(stages):
        spec = registry.get(s.stage) if s.stage in registry.NAMES else None
        if spec is not None and spec.plan is not None and spec.plan.loss == "contrastive":
            dims = (s.extra.get("matryoshka") or {}).get("dims")
            return [hidden if d == "full" else int(d) for d in dims] if dims else None
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
        stage = registry.by_section(section).name if section in registry.TRAIN_SECTIONS else "adapter"
        return StageInfo(stage, str(adapter), int(m.group(1)), _stage_data(stage_dir, stage),
                         {"checkpoint": adapter.name, "matryoshka": _stage_matryoshka(stage_dir, stage)})
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
        return ExportSource("stage", p, chain, stages, chain_tokenizer_dir(chain))

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
            return ExportSource("checkpoint", p, chain, stages, p if has_tokenizer(p) else chain_tokenizer_dir(prior))
        if (p / "config.json").exists() and any(p.glob("*.safetensors")):
            chain = _plain_model_chain(p)  # full weights (e.g. gathered ZeRO-3 model.safetensors)
            return ExportSource("checkpoint", p, chain, [], p if has_tokenizer(p) else chain_tokenizer_dir(chain))
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
    q = Path(stage_input).expanduser()
    if not q.is_dir():  # a MODEL spec (alias, tiny-<arch>, .gguf): its local folder
        from l2v_cli.modeling.sources import looks_like_path, resolve_model

        if not looks_like_path(str(stage_input)):
            q = resolve_model(str(stage_input)).path
    if not q.is_dir():
        raise L2VError(f"--stage-input {q} is not a folder", where="--stage-input",
                       fix="give the model or previous stage folder the stage was trained from")
    return _anchored(read_chain(q.absolute()), q.absolute())
