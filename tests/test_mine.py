"""Spec: `l2v mine` — hard negatives retrieved by the model, never a copy of the positive.

The guard and the rank window are checked exactly with a scripted encoder (known cosines); the
whole command on a tiny bidirectional model; bad input is one line and writes nothing."""

import json
import random

import numpy as np
import pytest
import torch

from cli_helpers import run_in_process
from l2v_cli.errors import L2VError
from l2v_cli.mine.negatives import choose_negatives
from l2v_cli.mine.run import mine, parse_range
from l2v_cli.mine.search import TopK, unit_rows


# --------------------------------------------------------------------------- search
def test_chunked_top_k_equals_a_full_sort():
    g = torch.Generator().manual_seed(0)
    q, d = unit_rows(torch.randn(7, 5, generator=g).numpy()), unit_rows(torch.randn(23, 5, generator=g).numpy())
    top = TopK(7, 6)
    for qa in (0, 4):  # query chunks of 4, corpus chunks of 5
        for da in range(0, 23, 5):
            top.update(slice(qa, min(qa + 4, 7)), q[qa:qa + 4], da, d[da:da + 5])
    full = torch.topk(q @ d.T, 6, dim=1)
    torch.testing.assert_close(top.scores, full.values)
    assert torch.equal(top.indices, full.indices)


# --------------------------------------------------------------------------- choosing negatives
RANKED = [3, 9, 4, 5, 6, 7, 8]                 # corpus indices, best first; 3 is the positive
SCORES = [0.90, 0.89, 0.80, 0.70, 0.60, 0.50, 0.40]  # 9 is a near copy of the positive


def test_guard_drops_candidates_scoring_near_the_positive():
    ch = choose_negatives(RANKED, SCORES, 3, 0.90, 0, 6, 6, 0.95, random.Random(0))
    assert ch.negatives == [4, 5, 6, 7, 8] and ch.guarded == 1   # 0.89 > 0.95 x 0.90


def test_control_without_the_guard_the_near_copy_is_a_negative():
    ch = choose_negatives(RANKED, SCORES, 3, 0.90, 0, 6, 6, 1.0, random.Random(0))
    assert ch.negatives == [9, 4, 5, 6, 7, 8] and ch.guarded == 0


def test_exact_copies_are_never_negatives_whatever_their_score():
    ch = choose_negatives(RANKED, SCORES, 3, 0.90, 0, 6, 6, 1.0, random.Random(0), same_text={9, 6})
    assert ch.negatives == [4, 5, 7, 8] and ch.same_text == 2


def test_rank_window_counts_from_the_best_non_positive_and_sampling_is_seeded():
    ch = choose_negatives(RANKED, SCORES, 3, 0.90, 2, 5, 6, 1.0, random.Random(0))
    assert ch.window == [5, 6, 7] and ch.negatives == [5, 6, 7]
    picks = {tuple(choose_negatives(RANKED, SCORES, 3, 0.90, 1, 6, 2, 1.0, random.Random(s)).negatives)
             for s in range(20)}
    assert len(picks) > 1 and all(len(p) == 2 and list(p) == sorted(p, key=RANKED.index) for p in picks)
    assert choose_negatives(RANKED, SCORES, 3, 0.9, 1, 6, 2, 1.0, random.Random(5)).negatives == \
        choose_negatives(RANKED, SCORES, 3, 0.9, 1, 6, 2, 1.0, random.Random(5)).negatives


def test_range_parsing():
    assert parse_range("10:100") == (10, 100)
    for bad in ("100", "5:5", "-1:4", "a:b"):
        with pytest.raises(L2VError, match="LO:HI"):
            parse_range(bad)


# --------------------------------------------------------------------------- mine() with a scripted encoder
class ScriptedEncoder:
    """Vectors by text: the query is e0; each document's cosine to it is scripted."""

    pooling, max_length, dim, name, path = "mean", 64, 4, "scripted", None

    def __init__(self, cos: dict[str, float]):
        self.cos = cos
        self._backbone = type("B", (), {"config": type("C", (), {"is_causal": False})()})()
        self.model = self._backbone
        self.dtype = torch.float32

    def tokenize(self, texts, instruction=None):
        return texts

    def encode(self, texts, instruction=None, **kw):
        out = []
        for t in texts:
            if t in self.cos:
                c = self.cos[t]
                out.append([c, np.sqrt(max(0.0, 1 - c * c)), 0, 0])
            else:  # a query
                out.append([1.0, 0, 0, 0])
        return np.asarray(out, dtype=np.float32)


def test_the_guard_never_writes_a_planted_duplicate_of_the_positive(tmp_path):
    pos = "Paris is the capital of France."
    cos = {pos: 0.90, pos + " ": 0.88, pos.upper(): 0.87,            # planted near copies
           **{f"other document {i}": 0.8 - 0.05 * i for i in range(10)}}
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"query": "what is the capital of France?", "positive": pos}) + "\n")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join([pos, pos, pos + " ", pos.upper(), *[t for t in cos if t.startswith("other")]]))
    # (the txt reader strips lines, so "pos + ' '" reads back as an exact copy of the positive)
    stats = mine(ScriptedEncoder(cos), str(pairs), tmp_path / "out", corpus=str(corpus), negatives=3,
                 rank_range=(0, 8), cache=False)
    rows = [json.loads(x) for x in (tmp_path / "out" / "pairs.jsonl").read_text().splitlines()]
    negs = [r["negative"] for r in rows]
    assert len(negs) == 3 and all(n.startswith("other document") for n in negs)
    s = stats["sets"]["pairs"]
    assert s["guarded"] == 1 and s["rows"] == 3                        # the upper-case copy
    # control: without the guard the upper-case copy is among the candidates that can be drawn
    mine(ScriptedEncoder(cos), str(pairs), tmp_path / "loose", corpus=str(corpus), negatives=8,
         rank_range=(0, 8), max_score_ratio=1.0, cache=False)
    loose = [json.loads(x)["negative"] for x in (tmp_path / "loose" / "pairs.jsonl").read_text().splitlines()]
    assert pos.upper() in loose and pos not in loose


# --------------------------------------------------------------------------- the command, end to end
@pytest.fixture(scope="module")
def bidir(tmp_path_factory):
    from l2v_cli.stages.enable_bidir import enable_bidir

    out = tmp_path_factory.mktemp("mine") / "bidir"
    enable_bidir("tiny-llama", out)
    return out


def test_mine_writes_the_e5_layout_that_train_supervised_reads(bidir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("L2V_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "mined"
    argv = ["mine", str(bidir), "--data", "data/supervised", "--max-samples", "40", "-o", str(out),
            "--range", "2:15", "--dtype", "float32"]
    code, err = run_in_process(argv, capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["allnli.jsonl", "instructions.json", "mining.json",
                                                     "nq.jsonl", "squad.jsonl"]
    stats = json.loads((out / "mining.json").read_text())
    for name in ("allnli", "nq", "squad"):
        rows = [json.loads(x) for x in (out / f"{name}.jsonl").read_text().splitlines()]
        assert len(rows) == stats["sets"][name]["rows"] == 40 - stats["sets"][name]["dropped_queries"]
        assert all(set(r) == {"query", "positive", "negative"} and r["negative"] != r["positive"] for r in rows)
        assert stats["sets"][name]["encoded"] > 0
    # a rerun encodes nothing: every embedding comes from the cache
    code, err = run_in_process(argv[:-2] + ["--overwrite", "--dtype", "float32"], capsys)
    assert code == 0, err
    again = json.loads((out / "mining.json").read_text())
    assert again["sets"]["squad"]["encoded"] == 0 and again["sets"]["squad"]["cached"] > 0
    # the mined folder trains as supervised data
    from l2v_cli.config import load_recipe
    from l2v_cli.stages.supervised import train_supervised

    r = load_recipe("smoke", [f"supervised.data.path={out}", "supervised.train.max_steps=2",
                              "supervised.train.save_steps=2"])
    done = train_supervised(r, str(bidir), tmp_path / "sup")
    assert json.loads((done / "stage.json").read_text())["steps"] == 2


def _refused(argv, capsys, tmp_path):
    code, err = run_in_process(argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()
    return err


def test_bad_inputs_are_one_line_and_write_nothing(bidir, tmp_path, capsys):
    o = str(tmp_path / "o")
    no_pos = tmp_path / "nopos.jsonl"
    no_pos.write_text('{"query": "q1", "positive": "p1"}\n{"query": "q2"}\n')
    assert "nopos.jsonl:2" in _refused(["mine", str(bidir), "--data", str(no_pos), "-o", o], capsys, tmp_path)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": f"q{i}", "positive": f"p{i}"}) + "\n" for i in range(5)))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert "holds no text" in _refused(["mine", str(bidir), "--data", str(pairs), "--corpus", str(empty),
                                        "-o", o], capsys, tmp_path)
    assert "beyond the 4 candidates" in _refused(["mine", str(bidir), "--data", str(pairs), "--range", "4:10",
                                                  "-o", o], capsys, tmp_path)
    assert "top 10 candidates" in _refused(["mine", str(bidir), "--data", str(pairs), "--range", "0:10",
                                            "-o", o], capsys, tmp_path)
    assert "causal (unconverted)" in _refused(["mine", "tiny-llama", "--data", str(pairs), "--range", "0:3",
                                               "-o", o], capsys, tmp_path)


# --------------------------------------------------------------------------- the `mine` stage of a run
def test_convert_runs_mntp_then_mine_then_supervised_on_the_mined_rows(tmp_path, monkeypatch):
    from l2v_cli.config import load_recipe
    from l2v_cli.stages.convert import convert

    monkeypatch.setenv("L2V_CACHE", str(tmp_path / "cache"))
    r = load_recipe("smoke", ["stages=[enable-bidir,train-mntp,mine,train-supervised,export]",
                              "mntp.data.max_samples=40", "mntp.train.max_steps=2", "mntp.train.save_steps=2",
                              "supervised.data.max_samples=24", "supervised.train.max_steps=2",
                              "supervised.train.save_steps=2", "mine.range=[1,8]", "dtype=float32"])
    out = tmp_path / "run"
    convert("tiny-llama", r, out, echo=lambda *_: None)
    mined = out / "03_mine"
    assert (mined / "DONE.json").exists() and (mined / "mining.json").exists()
    stats = json.loads((mined / "mining.json").read_text())
    assert {s["queries"] for s in stats["sets"].values()} == {24}  # the supervised data, capped per set
    assert not list(out.glob(".03_mine.model.*"))  # the merged model it mined with is gone
    sup = out / "04_train-supervised"
    cfg = (sup / "config.yaml").read_text()
    assert str(mined) in cfg and "instructions.json" in cfg  # trained on the mined rows
    # the supervised stage starts from MNTP (mine does not feed a model)
    assert json.loads((sup / "input.json").read_text())["input"] == str(out / "02_train-mntp")
    assert (out / "final" / "model.safetensors").exists()


def test_a_mine_stage_without_pairs_is_one_clear_error():
    from l2v_cli.config import load_recipe

    with pytest.raises(L2VError, match="stage 'mine' needs training data but mine.data.path is empty"):
        load_recipe("smoke", ["stages=[enable-bidir,train-mntp,mine,train-supervised,export]",
                              "supervised.data.path=null"])
