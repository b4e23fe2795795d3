"""What every training stage shares: its input chain, its folder layout, and how it finishes.

A training stage folder holds:
  config.yaml        the resolved recipe the stage ran with
  step-000200/ ...   checkpoints (resume points)
  metrics.jsonl, loss.png
  adapter/           the stage's LoRA adapter (+ tokenizer), written atomically at the end
  stage.json         written last: the stage is complete. Records the base model and the adapters
                     merged before this one, so the next stage (or export) can rebuild the chain.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from l2v_cli.errors import L2VError

STAGE_FILE = "stage.json"


@dataclass
class Chain:
    """A base model folder/spec and the adapters (oldest first) to merge on top of it."""

    base_model: str
    adapters: list[str] = field(default_factory=list)
    source: dict | None = None  # where the base came from (recorded by enable-bidir), for the model card


def read_chain(input_path: str | Path) -> Chain:
    """The chain behind a stage input: a completed training-stage folder, or a plain MODEL."""
    p = Path(input_path)
    if (p / STAGE_FILE).exists():
        p = p.resolve()  # stage.json records absolute adapter paths, whatever the working directory
        s = json.loads((p / STAGE_FILE).read_text())
        return Chain(s["base_model"], list(s["adapters"]) + [str(p / "adapter")], s.get("source"))
    if p.is_dir() and any(p.glob("step-*")) and not (p / "config.json").exists():
        raise L2VError(f"{p} is an unfinished training stage (no {STAGE_FILE})", where=str(p),
                       fix="finish it first: rerun its command with --resume")
    source = None
    cfg = p / "config.json"
    if cfg.exists():  # a folder from `l2v enable-bidir` remembers where it came from
        source = (json.loads(cfg.read_text()).get("l2v") or {}).get("source")
    return Chain(str(input_path), [], source)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def prepare_stage_dir(out: Path, stage_config: dict, resume: bool, force: bool) -> Path | None:
    """Create/validate the stage folder; return the checkpoint to resume from (or None)."""
    from l2v_cli.training import checkpoints as ck

    out = Path(out)
    if (out / STAGE_FILE).exists() and not force:
        raise L2VError(f"stage already complete: {out}", where=str(out),
                       fix="use another -o, or --force to retrain it")
    if out.exists() and force and is_main_process():
        shutil.rmtree(out)
    barrier()
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        ck.remove_stale(out)
    barrier()
    last = ck.last_checkpoint(out)
    if last is None:
        return None
    if not resume:
        raise L2VError(f"{out} already holds checkpoints (last: {last.name})", where=str(out),
                       fix="pass --resume to continue from it, or --force to start over")
    ck.check_compatible(last, stage_config)
    return last


def finish_stage(out: Path, trainer, tokenizer, stage: str, chain: Chain, extra: dict) -> None:
    """Save the adapter atomically, then stage.json (the completion marker).

    Every rank calls this: under ZeRO-3 the adapter weights are sharded and `save_model` gathers them.
    """
    tmp = out / ".adapter.tmp"
    if is_main_process():
        shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    trainer.save_model(str(tmp))
    if is_main_process():
        tokenizer.save_pretrained(tmp)
        final = out / "adapter"
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        base = Path(chain.base_model)
        record = {"stage": stage, "base_model": str(base.resolve()) if base.exists() else chain.base_model,
                  "adapters": chain.adapters, "adapter": "adapter", "source": chain.source,
                  "world_size": world_size(), **extra}
        tmp_json = out / (STAGE_FILE + ".tmp")
        tmp_json.write_text(json.dumps(record, indent=1))
        os.replace(tmp_json, out / STAGE_FILE)
    barrier()


def write_ledger(out: Path, rows: list) -> None:
    """Which training rows this process trained on since it started (per rank): shows the sharding."""
    d = out / "ledger"
    d.mkdir(exist_ok=True)
    (d / f"rank-{os.environ.get('RANK', '0')}.json").write_text(json.dumps(rows))


def write_config(out: Path, recipe, input_model=None) -> None:
    """The resolved recipe, and what the stage trains from (so its checkpoints export before it ends)."""
    from l2v_cli.config import dump_recipe_yaml

    if is_main_process():
        (out / "config.yaml").write_text(dump_recipe_yaml(recipe))
        if input_model is not None:
            p = Path(input_model)
            (out / "input.json").write_text(json.dumps({"input": str(p.resolve()) if p.exists() else str(input_model)}))


def note(msg: str) -> None:
    """One line on stderr from the main process (every rank would repeat it)."""
    if is_main_process():
        import sys

        print(f"l2v: {msg}", file=sys.stderr, flush=True)


def resolve_stage_recipe(recipe, input_model, provenance: dict | None, section: str):
    """The recipe with the model family's values for its `auto` settings, and the record of where
    each came from. `provenance` is what the caller resolved (convert, the CLI: it knows recipe
    lines and overrides); without it the stage resolves and says so itself — the notes about its
    own section and the attention kernel."""
    from l2v_cli.config.resolve import resolve_for_model

    resolved = resolve_for_model(recipe, input_model)
    if provenance is None:
        provenance = resolved.provenance()
        for n in resolved.notes:
            if n.startswith(("model family:", f"{section}.", "bidir.")):
                note(f"note: {n}")
    return resolved, provenance


def has_tokenizer(p: Path) -> bool:
    return (Path(p) / "tokenizer_config.json").exists() or (Path(p) / "tokenizer.json").exists()


def chain_tokenizer_dir(chain: Chain) -> Path:
    """Where the chain's tokenizer is: the newest adapter saved with one (a stage that added a token
    saved the grown tokenizer), else the base model."""
    for a in reversed(chain.adapters):
        if has_tokenizer(Path(a)):
            return Path(a)
    return Path(chain.base_model)


def load_training_model(recipe, chain: Chain, lm_head: bool):
    """Load the chain's base, make it bidirectional (verified), merge earlier adapters (one merge
    path: `training.lora.merge_adapters`); the tokenizer is the chain's (`chain_tokenizer_dir`)."""
    from l2v_cli.modeling.loading import load_model, load_tokenizer
    from l2v_cli.training.lora import merge_adapters
    from l2v_cli.utils.device import resolve_dtype

    dtype = resolve_dtype(recipe.dtype)
    # Frozen base weights in the compute dtype (bf16 halves memory); LoRA weights stay fp32 (peft).
    loaded = load_model(chain.base_model, dtype=str(dtype).replace("torch.", ""),
                        attn_implementation=recipe.bidir.attn_implementation, bidirectional=True,
                        verify=recipe.bidir.verify, lm_head=lm_head)
    model = merge_adapters(loaded.model, chain.adapters)
    tok_dir = chain_tokenizer_dir(chain)
    if chain.adapters and tok_dir != Path(chain.base_model):
        loaded.tokenizer = load_tokenizer(tok_dir)
    return model, loaded, dtype


def stage_config(recipe, section: str) -> dict:
    from l2v_cli.config import recipe_to_dict

    d = recipe_to_dict(recipe)
    return {"section": section, **d[section], "bidir": d["bidir"], "dtype": d["dtype"], "seed": d["seed"]}
