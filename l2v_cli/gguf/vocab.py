"""The tokenizer, embedded in the GGUF so that llama.cpp splits text into the same ids as transformers.

Supported: byte-level BPE tokenizers (GPT-2 / Llama-3 / Qwen2 / SmolLM style: a `tokenizer.json`
whose model is BPE without byte fallback). llama.cpp has no general pre-tokenizer; it picks one
of its built-in regex sets by the name in `tokenizer.ggml.pre`. We read the pre-tokenizer from
tokenizer.json and name the llama.cpp set that splits the same way:

    ByteLevel(use_regex)                         -> "gpt-2"
    Digits(individual) + ByteLevel(use_regex)    -> "smollm"   (digits one by one, then GPT-2)
    Split(<llama-3 regex>) + ByteLevel           -> "llama-bpe"
    Split(<qwen2 regex>)  + ByteLevel            -> "qwen2"

Anything else is refused (one line naming what was found). The special tokens the tokenizer adds
around a text (read off a probe, as the Encoder does) become `add_bos_token` / `add_eos_token`;
`eos` pooling makes llama.cpp append EOS as `l2v encode` does. The attention sink our converted
tokenizers put after BOS (modeling/sink.py: EOS + " ") has no GGUF flag: llama.cpp adds at most
BOS. Its ids go into the file as `l2v.sink_token_ids`, and a client sends them before the text
(docs/gguf.md: a token-id prompt). Whether llama.cpp really tokenizes
the same is checked by `l2v_cli.gguf.llamacpp.check_tokenization` on the probe sentences below.

SentencePiece-style tokenizers (BPE with byte fallback and "▁" for spaces: Llama-2, Gemma) are
refused for now: their llama.cpp tokenizer merges by score, which a tokenizer.json does not carry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from l2v_cli.errors import L2VError

# The pre-tokenizer regexes of tokenizer.json files that llama.cpp implements under a name.
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_BY_REGEX = {LLAMA3_REGEX: "llama-bpe", QWEN2_REGEX: "qwen2"}

# Sentences whose token ids llama.cpp must reproduce (besides the data the check is given):
# whitespace runs, digits, contractions, unicode, emoji, code, special-token look-alikes.
PROBES = [
    "Hello world", " leading space", "trailing space ", "  two  spaces  ", "tab\tand\nnewline\n\nend",
    "I'm sure you'll see they've done it; we'd say it's fine.", "DON'T SHOUT, I'LL LISTEN",
    "3 33 333 3333 33333 3.14159 1,000,000 2024-06-01", "café naïve résumé Ærøskøbing", "Straße — “quotes” ‘x’",
    "日本語のテキストです。", "Привет, мир!", "emoji 🚀🦙 and ✅ ok", "def f(x):\n    return x ** 2  # square",
    "<s> </s> <|im_start|> look special but are text", "a" * 40, "...!!!???---===", "", " ", "\n",
]


def probe_texts(n_sts: int = 50) -> list[str]:
    """The tokenization probes: the tricky strings of PROBES + the first STS-B sentences."""
    from l2v_cli.eval.tasks import eval_data_dir

    texts = list(PROBES)
    path = eval_data_dir() / "stsb" / "test.jsonl"
    with open(path, encoding="utf-8") as f:
        for line in f:
            if len(texts) >= len(PROBES) + n_sts:
                break
            texts.append(json.loads(line)["sentence1"])
    return texts


@dataclass
class Vocab:
    model: str  # llama.cpp tokenizer model: "gpt2"
    pre: str  # llama.cpp pre-tokenizer name
    tokens: list[str]
    types: list[int]  # gguf.TokenType values
    merges: list[str]
    special: dict[str, int] = field(default_factory=dict)  # bos/eos/unk/pad -> id
    add_bos: bool = False
    add_eos: bool = False
    sink: list[int] = field(default_factory=list)  # ids the tokenizer puts after BOS, before the text

    def add_to(self, writer) -> None:
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.types)
        writer.add_token_merges(self.merges)
        adders = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id,
                  "unk": writer.add_unk_token_id, "pad": writer.add_pad_token_id}
        for kind, tid in self.special.items():
            adders[kind](tid)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(self.add_eos)


def _flatten(pre) -> list[dict]:
    if not pre:
        return []
    if pre.get("type") == "Sequence":
        return [x for p in pre.get("pretokenizers", []) for x in _flatten(p)]
    return [pre]


def _split_regex(item: dict) -> str | None:
    pat = item.get("pattern") or {}
    return pat.get("Regex") if isinstance(pat, dict) else None


def pre_tokenizer_name(tj: dict, where: str) -> str:
    """The llama.cpp pre-tokenizer that splits like tokenizer.json's; L2VError if none does."""
    items = _flatten(tj.get("pre_tokenizer"))
    kinds = [i.get("type") for i in items]
    desc = " + ".join(str(k) for k in kinds) or "none"
    norm = tj.get("normalizer")
    if norm and norm.get("type") not in ("NFC",):
        raise L2VError(f"the tokenizer has a {norm.get('type')} normalizer, which the GGUF export cannot embed",
                       where=where, fix="use --format st for this model")
    byte_level = [i for i in items if i.get("type") == "ByteLevel"]
    if len(byte_level) != 1 or byte_level[0].get("add_prefix_space"):
        raise L2VError(f"pre-tokenizer {desc} is not byte-level BPE as llama.cpp implements it", where=where,
                       fix="use --format st for this model")
    if kinds == ["ByteLevel"] and byte_level[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and items[0].get("individual_digits") and byte_level[0].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not byte_level[0].get("use_regex", True):
        name = PRE_BY_REGEX.get(_split_regex(items[0]) or "")
        if name:
            if norm and name != "qwen2":
                raise L2VError(f"an NFC normalizer with the {name} pre-tokenizer is not supported", where=where,
                               fix="use --format st for this model")
            return name
    raise L2VError(f"pre-tokenizer {desc} has no llama.cpp counterpart known to l2v", where=where,
                   fix="use --format st for this model (supported: GPT-2, SmolLM, Llama-3 and Qwen2 style BPE)")


def build_vocab(folder: Path, n_vocab: int, pooling: str) -> tuple[Vocab, object]:
    """(Vocab for the GGUF, the transformers tokenizer) from a model folder's tokenizer files."""
    import gguf

    from l2v_cli.encoding.encoder import special_affixes
    from l2v_cli.modeling.loading import load_tokenizer
    from l2v_cli.modeling.sink import installed_sink

    folder = Path(folder)
    tj_path = folder / "tokenizer.json"
    where = str(tj_path)
    if not tj_path.is_file():
        raise L2VError(f"no tokenizer.json in {folder}: the GGUF export needs a fast (tokenizers) tokenizer",
                       where=str(folder), fix="export a model whose tokenizer has a tokenizer.json")
    tj = json.loads(tj_path.read_text(encoding="utf-8"))
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise L2VError(f"tokenizer model {model.get('type')!r} is not supported by the GGUF export", where=where,
                       fix="use --format st (GGUF export supports byte-level BPE tokenizers)")
    if model.get("byte_fallback"):
        raise L2VError("SentencePiece-style tokenizers (byte fallback, e.g. Llama-2, Gemma) are not supported by "
                       "the GGUF export yet", where=where, fix="use --format st for this model")
    pre = pre_tokenizer_name(tj, where)
    tok = load_tokenizer(folder)
    id_to_tok: dict[int, str] = {i: t for t, i in model["vocab"].items()}
    added = {a["id"]: a for a in tj.get("added_tokens", [])}
    top = max([*id_to_tok, *added]) + 1
    if top > n_vocab:
        raise L2VError(f"the tokenizer has ids up to {top - 1} but the model only {n_vocab} embeddings", where=where,
                       fix="the tokenizer does not belong to this model")
    tokens, types = [], []
    for i in range(n_vocab):
        if i in added:
            a = added[i]
            tokens.append(a["content"])
            types.append(gguf.TokenType.CONTROL if a.get("special") else gguf.TokenType.USER_DEFINED)
        elif i in id_to_tok:
            tokens.append(id_to_tok[i])
            types.append(gguf.TokenType.NORMAL)
        else:  # embedding rows beyond the tokenizer (padded vocabularies)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    special = {}
    for kind in ("bos", "eos", "unk", "pad"):
        tid = getattr(tok, f"{kind}_token_id", None)
        if tid is not None:
            special[kind] = int(tid)
    prefix, suffix = special_affixes(tok)
    sink = list((installed_sink(folder) or {}).get("ids") or [])
    if sink and prefix[len(prefix) - len(sink):] == sink:
        prefix = prefix[:len(prefix) - len(sink)]
    bos, eos = special.get("bos"), special.get("eos")
    if prefix not in ([], [bos]) or suffix not in ([], [eos]):
        raise L2VError(f"the tokenizer adds {prefix + sink} before and {suffix} after each text; llama.cpp can "
                       "only add BOS and EOS (and our attention sink through the client)", where=where,
                       fix="use --format st for this model")
    add_eos = bool(suffix) or pooling == "eos"
    if pooling == "eos" and eos is None:
        raise L2VError("pooling 'eos' needs a tokenizer with an EOS token", where=where, fix="export with --pooling mean")
    return Vocab("gpt2", pre, tokens, [int(t) for t in types], merges, special, bool(prefix), add_eos, sink), tok
