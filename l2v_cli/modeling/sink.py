"""The attention sink: a few fixed tokens the converted model's tokenizer puts before every text.

Why. A causal LLM parks the attention it does not need on its first token (an "attention sink",
with activations hundreds of times the others'). Made bidirectional, SmolLM2-135M spreads that
role over several tokens of a bare sentence and embeds bare text badly: STS-B dev Spearman 27.4
untrained, 24.4 after MNTP + 20 SimCSE steps — while the SAME models score 66.9 / 73.1 once an
instruction such as "Retrieve semantically similar text: " precedes the text. The instruction's
words are not what helps: its lone trailing space token ("Ġ") takes ~20% of all attention; EOS +
a lone space before the text gives 74.3 (73.5 when pooled with the text) on the SimCSE model,
while BOS, EOS or "\\n" alone give 1-18 on the untrained one (measurements: docs/quality.md).
So the converted model gets its sink for good: the tokenizer's post-processor prepends
`EOS + " "` (after any BOS) to every text, exactly as it adds BOS. Every consumer then sees it:
our training stages and eval, `SentenceTransformer(path).encode(texts)` with no prompt, and
plain `AutoTokenizer` + `AutoModel`.

`bidir.sink`: "auto" (EOS if the tokenizer has one, then the token(s) of a lone space), "none",
or a literal text whose tokens are the sink. enable-bidir records the sink in config.json
(`l2v.sink`); a tokenizer class that rebuilds its post-processor on load cannot keep it (one
warning line, and the model is converted without one).
"""

from __future__ import annotations

import json
from pathlib import Path

from l2v_cli.encoding.encoder import special_affixes
from l2v_cli.errors import L2VError

SINK_NAME = "l2v_sink"


def sink_ids(tok, spec: str) -> list[int]:
    """The token ids of the sink `spec` ("auto", "none" or a literal text) for tokenizer `tok`."""
    if spec == "none":
        return []
    if spec == "auto":
        eos = getattr(tok, "eos_token_id", None)
        return ([eos] if eos is not None else []) + list(tok(" ", add_special_tokens=False)["input_ids"])
    ids = list(tok(spec, add_special_tokens=False)["input_ids"])
    if not ids:
        raise L2VError(f"the sink {spec!r} tokenizes to nothing", where="bidir.sink",
                       fix='use "auto", "none" or a non-empty text')
    return ids


def _template_items(pp: dict, key: str) -> list:
    return pp.get(key) or []


def _insert_sink(pp: dict, ids: list[int], tokens: list[str]) -> None:
    """Put the sink before the first sequence ($A, and $B of a pair) of a TemplateProcessing dict."""
    item = {"SpecialToken": {"id": SINK_NAME, "type_id": 0}}
    for key in ("single", "pair"):
        seq = _template_items(pp, key)
        first = next((i for i, x in enumerate(seq) if "Sequence" in x), None)
        if first is not None and seq[first - 1:first] != [item]:
            seq.insert(first, item)
        pp[key] = seq
    pp.setdefault("special_tokens", {})[SINK_NAME] = {"id": SINK_NAME, "ids": ids, "tokens": tokens}


def install_sink(folder: Path, tok, ids: list[int]) -> None:
    """Rewrite `folder`/tokenizer.json so the tokenizer prepends `ids` to every text (after any
    special prefix such as BOS). L2VError if there is no tokenizer.json (a slow tokenizer)."""
    tj = Path(folder) / "tokenizer.json"
    if not tj.exists():
        raise L2VError("the attention sink needs a fast tokenizer (tokenizer.json)", where=str(folder),
                       fix="set bidir.sink=none")
    d = json.loads(tj.read_text(encoding="utf-8"))
    tokens = tok.convert_ids_to_tokens(ids)
    template = {"type": "TemplateProcessing",
                "single": [{"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {}}
    pp = d.get("post_processor")
    if pp is None:
        d["post_processor"] = template
        _insert_sink(template, ids, tokens)
    elif pp.get("type") == "TemplateProcessing":
        _insert_sink(pp, ids, tokens)
    elif pp.get("type") == "Sequence" and any(x.get("type") == "TemplateProcessing" for x in pp.get("processors", [])):
        _insert_sink(next(x for x in pp["processors"] if x.get("type") == "TemplateProcessing"), ids, tokens)
    else:  # e.g. ByteLevel (offsets only): keep it, then add the sink
        _insert_sink(template, ids, tokens)
        d["post_processor"] = {"type": "Sequence", "processors": [pp, template]}
    tj.write_text(json.dumps(d, ensure_ascii=False), encoding="utf-8")


def reads_sink(tok, ids: list[int]) -> bool:
    """Does `tok` (e.g. reloaded with plain AutoTokenizer) put `ids` right before a text's tokens?"""
    prefix, _ = special_affixes(tok)
    return not ids or prefix[-len(ids):] == ids


def installed_sink(folder: Path) -> dict | None:
    """The sink `install_sink` wrote into `folder`/tokenizer.json ({"ids", "tokens"}), or None."""
    tj = Path(folder) / "tokenizer.json"
    if not tj.exists():
        return None
    pp = json.loads(tj.read_text(encoding="utf-8")).get("post_processor") or {}
    for proc in [pp] + list(pp.get("processors") or []):
        entry = (proc.get("special_tokens") or {}).get(SINK_NAME)
        if entry:
            return {"ids": list(entry["ids"]), "tokens": list(entry["tokens"])}
    return None


__all__ = ["sink_ids", "install_sink", "installed_sink", "reads_sink", "SINK_NAME"]
