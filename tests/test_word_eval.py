"""Spec: word-level probes (`l2v eval --word-tasks`) — alignment, label positions, metrics, cache, CLI."""

import json
import subprocess
import sys

import numpy as np
import pytest

from l2v_cli.errors import L2VError
from l2v_cli.eval.word import evaluate_words, load_word_data
from l2v_cli.eval.word.features import align, extract
from l2v_cli.eval.word.metrics import accuracy, entity_f1, spans
from tests.word_sample import write_sample


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return write_sample(tmp_path_factory.mktemp("words") / "sample")


@pytest.fixture(scope="module")
def encoder():
    from l2v_cli.encoding.encoder import Encoder
    from l2v_cli.modeling.bidir import set_bidirectional
    from l2v_cli.modeling.tiny import make_tiny_model

    model, tok = make_tiny_model("llama")
    set_bidirectional(model)
    return Encoder(model, tok)


def test_alignment_maps_each_word_to_exactly_its_subtokens(encoder):
    tok = encoder.tokenizer
    words = ["Rio", "de", "Janeiro", "sells", "a", "red", "unbelievablyquiet", "car", "."]
    ids, word_spans = align(tok, words)
    assert [tok.decode(ids[a:b + 1]).strip() for a, b in word_spans] == words
    assert word_spans[0][0] == 0 and word_spans[-1][1] == len(ids) - 1
    assert all(a <= b for a, b in word_spans)
    assert all(prev[1] < cur[0] for prev, cur in zip(word_spans, word_spans[1:]))  # in order, disjoint
    assert any(b > a for a, b in word_spans)  # the long word really is several sub-tokens


def test_next_token_reads_the_position_before_the_word(encoder):
    import torch

    words = ["Mary", "likes", "the", "old", "ship", "."]
    feats, stats = extract(encoder, [words])
    ids, word_spans = align(encoder.tokenizer, words)
    batch = encoder.collate([__import__("l2v_cli.encoding.encoder", fromlist=["Tokenized"]).Tokenized(
        encoder.prefix + ids + encoder.suffix, 0)])
    with torch.inference_mode():
        h = encoder.hidden_states(batch)[0].float().numpy()
    p = len(encoder.prefix)
    for i, (first, _) in enumerate(word_spans):
        np.testing.assert_allclose(feats["same_token"][i], h[first + p], rtol=0, atol=1e-5)
        np.testing.assert_allclose(feats["next_token"][i], h[first + p - 1], rtol=0, atol=1e-5)
    assert stats["fallbacks"] == 0  # the tiny tokenizer adds a BOS: word 0 reads it


def test_mean_subword_pooling_averages_the_word_tokens(encoder):
    import torch

    from l2v_cli.encoding.encoder import Tokenized

    words = ["unbelievablyquiet", "dog"]
    feats, _ = extract(encoder, [words], subword="mean")
    ids, word_spans = align(encoder.tokenizer, words)
    with torch.inference_mode():
        h = encoder.hidden_states(encoder.collate([Tokenized(encoder.prefix + ids, 0)]))[0].float().numpy()
    a, b = word_spans[0]
    np.testing.assert_allclose(feats["same_token"][0], h[a + 1:b + 2].mean(0), atol=1e-5)
    np.testing.assert_allclose(feats["next_token"][0], h[a:b + 1].mean(0), atol=1e-5)


def test_iob2_spans_and_entity_f1_follow_conlleval():
    assert spans(["B-PER", "I-PER", "O", "B-LOC"]) == {("PER", 0, 2), ("LOC", 3, 4)}
    # An I- that does not continue an entity of its type starts one; B- always starts one.
    assert spans(["I-LOC", "I-LOC", "B-LOC", "I-ORG"]) == {("LOC", 0, 2), ("LOC", 2, 3), ("ORG", 3, 4)}
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "O", "O", "B-LOC"], ["B-ORG", "B-MISC"]]  # 2 of 4 predicted entities right, 2 of 3 gold
    r = entity_f1(gold, pred)
    assert r["precision"] == pytest.approx(50.0) and r["recall"] == pytest.approx(200 / 3)
    assert r["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3) * 100)
    assert accuracy(gold, pred) == pytest.approx(100 * 4 / 6)
    assert entity_f1([["O"]], [["O"]])["f1"] == 0.0


def test_probes_learn_the_synthetic_tags_and_features_come_from_the_cache_the_second_time(
        encoder, sample, tmp_path, monkeypatch):
    monkeypatch.setenv("L2V_CACHE", str(tmp_path / "cache"))
    encoder.path = None  # an in-memory model: no fingerprint, no cache
    res = evaluate_words(encoder, ["pos", "chunk", "ner"], sample)
    wd = load_word_data(sample, ["pos"])
    majority = max(np.unique([t for s in wd.test.tags["pos"] for t in s], return_counts=True)[1])
    majority = 100 * majority / res["settings"]["test_words"]
    for pos in ("same_token", "next_token"):
        assert res["tasks"]["pos"][pos]["accuracy"] > majority + 40, res["tasks"]["pos"]
    # The words decide the tags here, so reading them at the word's own token is near perfect.
    assert res["tasks"]["pos"]["same_token"]["accuracy"] > 95
    assert res["tasks"]["ner"]["same_token"]["f1"] > 80 and res["tasks"]["ner"]["main_metric"] == "f1"
    assert res["tasks"]["chunk"]["main_metric"] == "accuracy"
    assert res["features"]["train"]["cached"] is False


def test_cache_hit_runs_no_model_and_gives_the_same_scores(sample, tmp_path, monkeypatch):
    from l2v_cli.encoding.encoder import Encoder

    monkeypatch.setenv("L2V_CACHE", str(tmp_path / "cache"))
    enc = Encoder.from_pretrained("tiny-llama", dtype="float32", bidirectional=True)
    first = evaluate_words(enc, ["pos", "ner"], sample, train_limit=60, test_limit=20)
    calls = {"n": 0}
    real = enc.hidden_states
    monkeypatch.setattr(enc, "hidden_states", lambda *a, **k: (calls.__setitem__("n", calls["n"] + 1), real(*a, **k))[1])
    second = evaluate_words(enc, ["pos", "ner"], sample, train_limit=60, test_limit=20)
    assert calls["n"] == 0 and second["features"]["train"]["cached"] and second["features"]["test"]["cached"]
    assert second["tasks"] == first["tasks"]
    other = evaluate_words(enc, ["pos"], sample, train_limit=60, test_limit=20, layer=1)
    assert calls["n"] > 0 and other["settings"]["layer"] == 1  # another layer is another cache entry


def test_bad_word_data_is_one_clear_error(tmp_path):
    d = write_sample(tmp_path / "d", 4, 2)
    lines = (d / "train.jsonl").read_text().splitlines()
    row = json.loads(lines[1])
    row["ner"] = row["ner"][:-1]
    lines[1] = json.dumps(row)
    (d / "train.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(L2VError) as e:
        load_word_data(d, ["ner"])
    assert e.value.where.endswith("train.jsonl:2") and "tags for" in str(e.value)
    with pytest.raises(L2VError, match="no 'lemma' tags"):
        load_word_data(write_sample(tmp_path / "e", 4, 2), ["lemma"])
    (d / "test.jsonl").unlink()
    with pytest.raises(L2VError, match="has no test.jsonl"):
        load_word_data(d, ["pos"])


def test_cli_compares_models_in_one_table_and_writes_json(sample, tmp_path):
    out = tmp_path / "words.json"
    env = {**__import__("os").environ, "L2V_CACHE": str(tmp_path / "cache")}
    p = subprocess.run([sys.executable, "-m", "l2v_cli", "eval", "tiny-llama@bidirectional", "--word-tasks", "pos,ner",
                        "--data", str(sample), "--compare", "tiny-llama@causal", "--train-limit", "80",
                        "--limit", "20", "-o", str(out)], capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "Word-level probes" in p.stdout and "next_token" in p.stdout
    rep = json.loads(out.read_text())
    assert [r["settings"]["attention"] for r in rep["runs"]] == ["bidirectional", "causal"]
    assert rep["runs"][0]["settings"]["train_sentences"] == 80 and rep["runs"][0]["settings"]["test_sentences"] == 20
    for r in rep["runs"]:
        assert set(r["tasks"]) == {"pos", "ner"} and set(r["tasks"]["ner"]["same_token"]) >= {"f1", "accuracy"}
    p = subprocess.run([sys.executable, "-m", "l2v_cli", "eval", "tiny-llama", "--word-tasks", "pos"],
                       capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "--data" in p.stderr
