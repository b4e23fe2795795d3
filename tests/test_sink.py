"""Spec: the attention sink. enable-bidir makes the converted tokenizer put EOS + a lone space
token before every text (after BOS), for every consumer: a plain AutoTokenizer reload, our Encoder
(pooled like any token, as sentence-transformers pools it), and the export. `--sink none` is the
control: the tokenizer is left as it was."""
from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from l2v_cli.encoding.encoder import Encoder, special_affixes
from l2v_cli.errors import L2VError
from l2v_cli.modeling.sink import install_sink, installed_sink, reads_sink, sink_ids
from l2v_cli.modeling.tiny import make_tiny_model
from l2v_cli.stages.enable_bidir import enable_bidir
from l2v_cli.stages.export import export


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("sink")
    return {spec: enable_bidir("tiny-llama", root / spec, sink=spec) for spec in ("auto", "none")}


def test_enable_bidir_installs_eos_and_a_lone_space_after_bos(converted):
    tok = AutoTokenizer.from_pretrained(converted["auto"].out)
    eos, space = tok.eos_token_id, tok(" ", add_special_tokens=False)["input_ids"]
    assert len(space) == 1
    body = tok("hello world", add_special_tokens=False)["input_ids"]
    assert tok("hello world")["input_ids"] == [tok.bos_token_id, eos, *space, *body]
    rec = json.loads((converted["auto"].out / "config.json").read_text())["l2v"]["sink"]
    assert rec["ids"] == [eos, *space] and rec["spec"] == "auto"


def test_sink_none_leaves_the_tokenizer_alone(converted):
    tok = AutoTokenizer.from_pretrained(converted["none"].out)
    body = tok("hello world", add_special_tokens=False)["input_ids"]
    assert tok("hello world")["input_ids"] == [tok.bos_token_id, *body]
    assert json.loads((converted["none"].out / "config.json").read_text())["l2v"]["sink"] is None


def test_the_export_records_the_sink_it_carries_and_none_without_one(converted, tmp_path):
    """What a consumer that does not read tokenizer.json's post-processor (a GGUF writer, a
    serving stack) needs: the exported config.json names the sink's ids and tokens."""
    tok = AutoTokenizer.from_pretrained(converted["auto"].out)
    want = [tok.eos_token_id, *tok(" ", add_special_tokens=False)["input_ids"]]
    for spec, expected in (("auto", want), ("none", None)):
        out = export(converted[spec].out, tmp_path / spec)
        rec = json.loads((out / "config.json").read_text())["l2v"]["sink"]
        assert (rec and rec["ids"]) == (expected or None), spec
        assert installed_sink(out) == rec
    assert rec is None  # the control: no sink, nothing recorded


def test_the_encoder_pools_the_sink_with_the_text_and_not_behind_an_instruction(converted):
    enc = Encoder.from_pretrained(converted["auto"].out, dtype="float32")
    sink = sink_ids(enc.tokenizer, "auto")
    [bare] = enc.tokenize(["hello world"])
    assert bare.ids[1:3] == sink and bare.pool_start == 0  # everything pooled, as sentence-transformers does
    [instr] = enc.tokenize(["hello world"], instruction="Find it:\n")
    n_instr = len(enc.tokenizer("Find it:\n", add_special_tokens=False)["input_ids"])
    assert instr.ids[1:3] == sink and instr.pool_start == 3 + n_instr


@pytest.mark.parametrize("shape", ["none", "template", "bytelevel"])
def test_install_sink_on_every_post_processor_shape(tmp_path, shape):
    _, tok = make_tiny_model("llama")
    tok.save_pretrained(tmp_path)
    tj = tmp_path / "tokenizer.json"
    d = json.loads(tj.read_text())
    if shape == "none":
        d["post_processor"] = None
    elif shape == "bytelevel":
        d["post_processor"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                               "use_regex": False}
    tj.write_text(json.dumps(d))
    before = AutoTokenizer.from_pretrained(tmp_path)
    ids = sink_ids(before, "auto")
    assert not reads_sink(before, ids)  # control: nothing installed yet
    install_sink(tmp_path, before, ids)
    after = AutoTokenizer.from_pretrained(tmp_path)
    assert reads_sink(after, ids)
    assert special_affixes(after)[0] == special_affixes(before)[0] + ids
    assert after("a b", add_special_tokens=False)["input_ids"] == before("a b", add_special_tokens=False)["input_ids"]


def test_a_literal_sink_and_an_empty_one():
    _, tok = make_tiny_model("llama")
    assert sink_ids(tok, "none") == []
    assert sink_ids(tok, ": ") == tok(": ", add_special_tokens=False)["input_ids"]
    with pytest.raises(L2VError, match="tokenizes to nothing"):
        sink_ids(tok, "")
