"""The export's model card (README.md), built with `huggingface_hub.ModelCard` from a template.

A card is published with the model, so it names every source portably — alias, hub id, file name
and sha256 — and never a path of the machine that made it (run folder, virtual environment, home).
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import PurePath
from typing import Optional

from l2v_cli.stages.common import Chain
from l2v_cli.stages.export.source import ExportSource
from l2v_cli.stages.export.st_files import ST_LOADS_MIN_VERSION, ST_MIN_VERSION, TRANSFORMERS_MIN_VERSION

TAGS = ["sentence-transformers", "feature-extraction", "sentence-similarity", "llm2vec", "l2v"]

POOL_CODE = {
    "mean": "emb = (h * m).sum(1) / m.sum(1)",
    "weighted_mean": "w = m * m.cumsum(1)\nemb = (h * w).sum(1) / w.sum(1)",
    "last_token": "last = mask.sum(1) - 1\nemb = h[torch.arange(len(h)), last]",
    "eos": "last = mask.sum(1) - 1  # the tokenizer appends EOS\nemb = h[torch.arange(len(h)), last]",
    "bos": "emb = h[:, 0]",
}


def portable(value) -> str:
    """A data or model reference as a reader elsewhere can use it: hub ids and relative paths as
    they are, an absolute local path by its file name only. Lists element by element."""
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(portable(v) for v in value)
    text = str(value)
    p = PurePath(text)
    if p.is_absolute() or text.startswith("~"):
        return f"`{p.name}` (a local file)"
    return f"`{text}`"


def base_sources(chain: Chain) -> tuple[str, Optional[str], list[tuple[str, str]]]:
    """(readable base-model name, hub id or None, table rows naming where the weights came from)."""
    s = chain.source or {}
    hub = s.get("hub_id") or (s.get("spec") if s.get("kind") == "hub" else None)
    spec = s.get("spec")
    name = s.get("alias") or hub or (PurePath(spec).name if spec else None) or PurePath(chain.base_model).name
    rows = []
    if s.get("alias"):
        rows.append(("alias", f"`{s['alias']}` (`l2v models`)"))
    if hub:
        rows.append(("hub id", f"`{hub}`"))
    kind = s.get("kind")
    if kind == "gguf":
        rows.append(("weights", f"GGUF file `{PurePath(s.get('origin', '')).name}`, dequantised to float32"))
        if s.get("gguf_sha256"):
            rows.append(("GGUF sha256", f"`{s['gguf_sha256']}`"))
    elif kind == "tiny":
        rows.append(("weights", "random tiny model (tests and smoke runs only)"))
    elif kind == "folder":
        rows.append(("weights", f"a local folder `{PurePath(s.get('origin') or spec or '').name}`"))
    return str(name), hub, rows


def _eval(src: ExportSource) -> tuple[Optional[str], object]:
    cands = [src.path / "eval.json", src.path.parent / "eval.json"]
    if src.kind == "checkpoint":
        cands.append(src.path.parent.parent / "eval.json")
    for c in cands:
        if c.is_file():
            try:
                return c.name, json.loads(c.read_text())
            except (OSError, ValueError):
                continue
    return None, None


def eval_rows(ev) -> list[tuple[str, str, str]]:
    """(task, metric, value) for every number of an eval.json ({task: score} or {task: {metric: x}})."""
    data = ev.get("results", ev) if isinstance(ev, dict) else ev
    rows = []
    if isinstance(data, dict):
        for task, v in data.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                rows.append((task, "score", v))
            elif isinstance(v, dict):
                rows += [(task, metric, x) for metric, x in v.items()
                         if isinstance(x, (int, float)) and not isinstance(x, bool)]
    return [(t, m, f"{x:.4g}" if isinstance(x, float) else str(x)) for t, m, x in rows]


def model_card(out_name: str, src: ExportSource, *, pooling: str, normalize: bool, dtype: str,
               max_seq_length: int, query_instruction, document_instruction, tok_facts: dict,
               warnings_: list[str], recipe=None, licence: Optional[str] = None,
               matryoshka_dims: Optional[list[int]] = None, dim_scale: Optional[dict] = None) -> str:
    """The README.md text of an export."""
    from huggingface_hub import ModelCard, ModelCardData

    base, hub, sources = base_sources(src.chain)
    data = ModelCardData(library_name="sentence-transformers", pipeline_tag="sentence-similarity", tags=TAGS,
                         base_model=hub, license=licence if licence and licence != "unknown" else None)
    eval_file, ev = _eval(src)
    rows = eval_rows(ev) if ev is not None else []
    instr = [s.extra.get("instructions") for s in src.stages if s.extra.get("instructions")]
    card = ModelCard.from_template(
        data, template_str=files("l2v_cli.stages.export").joinpath("card_template.md").read_text(encoding="utf-8"),
        name=out_name, base=base, sources=sources, source_kind={"stage": "finished training stage",
                                                               "checkpoint": "training checkpoint",
                                                               "model": "bidirectional model folder"}[src.kind],
        pooling=pooling, normalize=normalize, dtype=dtype, max_seq_length=max_seq_length,
        query_instruction=query_instruction, document_instruction=document_instruction,
        recipe=getattr(recipe, "name", None) or None,
        stages=[{"stage": s.stage, "steps": "-" if s.steps is None else s.steps, "data": portable(s.data)}
                for s in src.stages],
        instructions=json.dumps(instr[-1], indent=2, ensure_ascii=False) if instr else None,
        prefix_tokens=" ".join(tok_facts.get("prefix_tokens") or []),
        trained=[s.stage for s in src.stages],
        st_min=ST_MIN_VERSION, transformers_min=TRANSFORMERS_MIN_VERSION, pool_code=POOL_CODE[pooling],
        eval_file=eval_file, eval_rows=rows, matryoshka_dims=matryoshka_dims,
        dim_scale=dim_scale and {**dim_scale, "data": portable(dim_scale["data"])},
        eval_json=json.dumps(ev, indent=2)[:4000] if ev is not None and not rows else None,
        notes=_notes(pooling, query_instruction, document_instruction, tok_facts, warnings_))
    return str(card).rstrip() + "\n"


def _notes(pooling, query_instruction, document_instruction, tok_facts: dict, warnings_: list[str]) -> list[str]:
    notes = [
        f"Needs sentence-transformers >= {ST_MIN_VERSION} with transformers >= {TRANSFORMERS_MIN_VERSION}: "
        "bidirectional attention comes from `\"is_causal\": false` in config.json, which older transformers "
        "ignore (the model would run causal and give different embeddings).",
        "The tokenizer has no chat template on purpose: sentence-transformers >= 6 would otherwise wrap every "
        "text in it" + (" (the source model had one; it was removed)." if tok_facts.get("had_chat_template")
                        else "."),
        "With a prompt, sentence-transformers and `l2v encode --instruction` both tokenise prompt + text as one "
        "string and leave the prompt's tokens out of the pooling. End a prompt with a newline: after \": \" the "
        "tokenizer glues the space to the text's first word, which is then left out of the pooling too. An "
        "empty text with a prompt is a zero vector in sentence-transformers.",
        f"sentence-transformers {ST_LOADS_MIN_VERSION}-5.3 strip whitespace around texts and prompts before "
        f"tokenising, so texts with leading/trailing whitespace differ there; use >= {ST_MIN_VERSION}.",
        "A bfloat16/float16 export loads in that dtype (transformers 5 default); on a CPU without fast bf16 pass "
        "`model_kwargs={\"dtype\": \"float32\"}` to SentenceTransformer.",
    ]
    if pooling == "eos":
        notes.append("`eos` pooling: the tokenizer appends the EOS token to every text and the last token is pooled.")
    if pooling == "weighted_mean" and (query_instruction or document_instruction):
        notes.append("weighted_mean with a prompt: sentence-transformers weights text tokens by their absolute "
                     "position (prompt included); `l2v encode` restarts the weights at the text.")
    notes += [f"Warning: {w}" for w in warnings_]
    return notes


__all__ = ["model_card", "portable", "base_sources", "eval_rows"]
