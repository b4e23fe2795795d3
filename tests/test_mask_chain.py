"""Spec: every `mntp.mask_token` choice converts end to end — MNTP -> SimCSE -> supervised -> export —
on tiny llama, mistral, qwen2, gemma3_text and phi3, and on a tokenizer that has no "_" token; the
export loads in sentence-transformers (a fresh process that never imports l2v_cli) with the same
embeddings as `l2v encode`'s Encoder (cos >= 0.9999, fp32).

`mask` adds a token: MNTP grows the vocabulary, peft saves the grown embedding rows, and every later
merge (SimCSE's, supervised's, the export's) must grow the model first — the one merge path.

`make test` runs one chain per choice and per architecture (a diagonal) plus `auto` on the tokenizer
without "_"; `make test-slow` runs every choice on every architecture and on that tokenizer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from l2v_cli.config import load_recipe
from l2v_cli.errors import L2VError

CHOICES = ["auto", "_", "eos", "mask", "@"]  # "@": a literal that is one token of the tiny tokenizer
ARCHS = ["llama", "mistral", "qwen2", "gemma3_text", "phi3"]
NO_UNDERSCORE = "no-underscore"  # tiny llama whose tokenizer cannot write "_" as one token
TEXTS = ["hello world", "a", "The quick brown fox jumps over the lazy dog.", "What is 2 + 2?", "x_y under_score"]
TINY = ["mntp.data.max_samples=16", "simcse.data.max_samples=16", "supervised.data.max_samples=4",
        "mntp.train.max_steps=1", "simcse.train.max_steps=1", "supervised.train.max_steps=1",
        "mntp.max_seq_length=16", "simcse.max_seq_length=16", "supervised.max_seq_length=64",
        "mntp.train.per_device_batch_size=2", "simcse.train.per_device_batch_size=2",
        "supervised.train.per_device_batch_size=2", "bidir.verify=false"]

DIAGONAL = list(zip(CHOICES, ARCHS)) + [("auto", NO_UNDERSCORE)]
EVERY = [(c, a) for a in ARCHS for c in CHOICES] + [(c, NO_UNDERSCORE) for c in CHOICES if c != "_"]


def cos_rows(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def no_underscore_model(root: Path) -> Path:
    """tiny-llama whose tokenizer has no "_" piece: "_" tokenises to <unk>, as with some SentencePiece
    vocabularies. Same weights and ids; the "_" entry is renamed and the merges that used it dropped."""
    from l2v_cli.modeling.tiny import save_tiny_model

    out = save_tiny_model("llama", root / NO_UNDERSCORE)
    tj = out / "tokenizer.json"
    d = json.loads(tj.read_text())
    vocab = d["model"]["vocab"]
    vocab["<no-underscore>"] = vocab.pop("_")
    merges = d["model"]["merges"]
    pair = (lambda m: m.split(" ")) if merges and isinstance(merges[0], str) else (lambda m: m)
    d["model"]["merges"] = [m for m in merges if not any("_" in piece for piece in pair(m))]
    tj.write_text(json.dumps(d))
    return out


def chain(choice: str, arch: str, root: Path, base: str) -> Path:
    """MNTP -> SimCSE -> supervised -> export of `base` with `mntp.mask_token=choice`; returns the export."""
    from l2v_cli.stages.export import export
    from l2v_cli.stages.mntp import train_mntp
    from l2v_cli.stages.simcse import train_simcse
    from l2v_cli.stages.supervised import train_supervised

    run = root / f"{arch}-{'literal' if choice == '@' else choice}"
    r = load_recipe("smoke", [*TINY, f"mntp.mask_token={json.dumps(choice)}"])
    mntp = train_mntp(r, base, run / "mntp")
    simcse = train_simcse(r, mntp, run / "simcse")
    sup = train_supervised(r, simcse, run / "sup")
    return export(sup, run / "export", pooling="mean", normalize=True, verify=False)


ST_SCRIPT = textwrap.dedent(r'''
    import json, sys
    import torch
    torch.set_num_threads(1)
    from sentence_transformers import SentenceTransformer
    spec = json.loads(sys.argv[1])
    out = {k: SentenceTransformer(f, device="cpu").encode(spec["texts"]).tolist() for k, f in spec["folders"].items()}
    assert "l2v_cli" not in sys.modules
    print("RESULT" + json.dumps(out))
''')


def st_embeddings(folders: dict[str, Path], cwd: Path) -> dict[str, np.ndarray]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    spec = {"folders": {k: str(v) for k, v in folders.items()}, "texts": TEXTS}
    p = subprocess.run([sys.executable, "-c", ST_SCRIPT, json.dumps(spec)], capture_output=True, text=True,
                       timeout=600, env=env, cwd=str(cwd))
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(next(x for x in p.stdout.splitlines() if x.startswith("RESULT"))[6:])
    return {k: np.array(v) for k, v in res.items()}


def run_matrix(cases, root: Path) -> dict:
    torch.set_num_threads(1)
    bases = {a: f"tiny-{a}" for a in ARCHS}
    bases[NO_UNDERSCORE] = str(no_underscore_model(root))
    exports, refused = {}, {}
    for choice, arch in cases:
        if choice == "_" and arch == NO_UNDERSCORE:
            continue
        exports[(choice, arch)] = chain(choice, arch, root, bases[arch])
    with pytest.raises(L2VError) as err:  # "_" is refused, clearly, where it is not one token
        chain("_", NO_UNDERSCORE, root, bases[NO_UNDERSCORE])
    refused["_"] = str(err.value)
    keys = {f"{c}|{a}": f for (c, a), f in exports.items()}
    st = st_embeddings(keys, root)
    return {"exports": exports, "st": {k: st[f"{k[0]}|{k[1]}"] for k in exports}, "refused": refused,
            "root": root}


def ours(folder: Path) -> np.ndarray:
    from l2v_cli.encoding import Encoder

    return Encoder.from_pretrained(folder, pooling="mean", dtype="float32").encode(TEXTS, normalize=True)


def check_case(m: dict, choice: str, arch: str) -> float:
    folder = m["exports"][(choice, arch)]
    cos = float(cos_rows(m["st"][(choice, arch)], ours(folder)).min())
    assert cos >= 0.9999, (choice, arch, cos)
    rec = json.loads((folder.parent / "mntp" / "stage.json").read_text())
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    if choice == "mask":  # the tiny tokenizer has no mask token: one was added and kept to the export
        from transformers import AutoTokenizer

        assert rec["mask_token"]["token"] == "<mask>" and vocab == 1025
        assert AutoTokenizer.from_pretrained(folder).mask_token == "<mask>"
    else:
        assert vocab == 1024
    return cos


@pytest.fixture(scope="module")
def diagonal(tmp_path_factory):
    return run_matrix(DIAGONAL, tmp_path_factory.mktemp("diag"))


@pytest.mark.parametrize("choice,arch", DIAGONAL)
def test_chain_exports_equal_embeddings(diagonal, choice, arch):
    check_case(diagonal, choice, arch)


def test_auto_falls_back_when_the_family_token_is_not_one_token(diagonal):
    """The issue's refusal: `auto` on a Llama-family tokenizer without "_" must pick another token
    (here EOS: no mask token, no "_", no unused special token), say so, and convert."""
    rec = json.loads((diagonal["exports"][("auto", NO_UNDERSCORE)].parent / "mntp" / "stage.json").read_text())
    assert rec["mask_token"]["token"] == "</s>"
    assert rec["mask_token"]["how"].startswith("EOS '</s>' (auto: the family's token '_' is not one token")
    # control: on the ordinary tiny tokenizer auto keeps the family's "_"
    rec = json.loads((diagonal["exports"][("auto", "llama")].parent / "mntp" / "stage.json").read_text())
    assert rec["mask_token"] == {"spec": "auto", "token": "_", "id": rec["mask_token"]["id"],
                                 "how": "the family's token '_'"}


def test_explicit_underscore_keeps_its_clear_error(diagonal):
    msg = diagonal["refused"]["_"]
    assert "mask token '_' is not a single token" in msg and "<unk>" in msg and "auto" in msg


def test_mask_grows_the_vocabulary_through_every_merge(diagonal):
    """`mask` (on gemma3_text in the diagonal): the export holds the grown row and a tokenizer that
    knows <mask>; the control (auto on llama) keeps the original size."""
    grown = diagonal["exports"][("mask", "gemma3_text")]
    assert json.loads((grown / "config.json").read_text())["vocab_size"] == 1025
    same = diagonal["exports"][("auto", "llama")]
    assert json.loads((same / "config.json").read_text())["vocab_size"] == 1024


@pytest.mark.slow
def test_every_choice_on_every_architecture(tmp_path_factory):
    m = run_matrix(EVERY, tmp_path_factory.mktemp("every"))
    table = {case: check_case(m, *case) for case in EVERY if case in m["exports"]}
    assert len(table) == len(EVERY)
    print("\nmask token x architecture: min cos(sentence-transformers, l2v encode)")
    for (choice, arch), cos in sorted(table.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(f"  {arch:<14} {choice:<5} {cos:.8f}")


def test_family_masking_reached_training(diagonal):
    """The chains trained with their family's MNTP settings: Mistral all-mask 0.8 (the paper's),
    Llama 80-10-10 0.2 — in the config the stage ran with and in its record, with the source."""
    def stage(case):
        d = diagonal["exports"][case].parent / "mntp"
        return yaml.safe_load((d / "config.yaml").read_text())["mntp"], json.loads((d / "stage.json").read_text())

    cfg, rec = stage(("_", "mistral"))
    assert (cfg["mask_probability"], cfg["mask_strategy"]) == (0.8, "all")
    assert rec["resolved"]["values"]["mntp.mask_probability"] == {"value": 0.8, "source": "family default (paper)"}
    assert rec["resolved"]["family"] == "mistral"
    cfg, rec = stage(("auto", "llama"))  # control: the Llama family's
    assert (cfg["mask_probability"], cfg["mask_strategy"]) == (0.2, "80-10-10")


def test_control_without_the_resize_the_next_stage_dies(diagonal, monkeypatch, tmp_path):
    """What the chain test guards against: merging the grown MNTP adapter into a model of the old
    size fails with a size mismatch (the single merge path grows the model first)."""
    import l2v_cli.training.lora as lora
    from l2v_cli.stages.simcse import train_simcse

    monkeypatch.setattr(lora, "saved_vocab_size", lambda model, path: None)
    mntp = diagonal["exports"][("mask", "gemma3_text")].parent / "mntp"
    with pytest.raises(L2VError, match="adapter 1/1 of the chain .* does not fit the base model"):
        train_simcse(load_recipe("smoke", TINY), mntp, tmp_path / "simcse")
