"""Tokenizer surgery for the export: the tokenizer is saved without a chat template and padding on
the right; for `eos` pooling its post-processor is made to append EOS; and an instruction that
tokenises differently joined to a text than apart (what sentence-transformers does vs what
`l2v encode` does) is detected. See the package doc for why."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from l2v_cli.encoding.encoder import special_affixes
from l2v_cli.errors import L2VError
from l2v_cli.modeling.loading import load_tokenizer

_CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
_CHAT_TEMPLATE_DIRS = ("additional_chat_templates",)


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


def write_tokenizer(tmp: Path, tok_dir: Path, pooling: str) -> dict:
    """Save the tokenizer without a chat template; returns facts for the card and checks."""
    tok = load_tokenizer(Path(tok_dir))
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
    prefix, suffix = special_affixes(tok)
    if pooling == "eos" and not (suffix and suffix[-1] == tok.eos_token_id):
        _append_eos_post_processor(tmp, tok)

    # Check what a plain AutoTokenizer (what sentence-transformers uses) makes of the folder.
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(tmp)
    if getattr(plain, "chat_template", None) is not None:
        raise L2VError("the exported tokenizer still carries a chat template", where=str(tmp),
                       fix="please report this tokenizer type")
    if special_affixes(plain)[0] != prefix:  # e.g. the attention sink (l2v_cli/modeling/sink.py)
        raise L2VError(f"the exported tokenizer ({type(plain).__name__}) no longer puts {prefix} before a text "
                       "after a reload", where=str(tmp), fix="please report this tokenizer type")
    if pooling == "eos":
        p2, s2 = special_affixes(plain)
        if not (s2 and s2[-1] == plain.eos_token_id):
            raise L2VError(f"this tokenizer ({type(plain).__name__}) will not append EOS after a reload, so "
                           "'eos' pooling cannot be reproduced in sentence-transformers", where="--pooling",
                           fix="export with --pooling last_token (identical for texts ending in EOS) or mean")
    return {"had_chat_template": had_template or bool(removed), "removed": removed,
            "prefix": prefix, "suffix": suffix, "tokenizer": tok}


def boundary_check(tok, instruction: str) -> tuple[bool, bool]:
    """Does tokenising instruction + text as ONE string (what sentence-transformers does) differ from
    tokenising them separately? If so the instruction's last token merges into the text's first,
    which the prompt count then leaves out of the pooling (for ordinary texts, for texts that start
    with whitespace)."""
    ins = tok(instruction, add_special_tokens=False)["input_ids"]

    def differs(probes):
        return any(ins + tok(t, add_special_tokens=False)["input_ids"]
                   != tok(instruction + t, add_special_tokens=False)["input_ids"] for t in probes)

    return (differs(["hello world", "The cat sat.", "What is 2 + 2?", "42 apples", "Hello", "'quoted'"]),
            differs(["  two spaces", " one space", "\nnew line", "\tTab"]))
