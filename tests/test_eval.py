"""`l2v eval`: metric functions, the four task kinds, the embedding cache, data layouts, the CLI.

Metrics are checked against values worked out by hand; tasks run end to end on a tiny random
model with `limit` small (their scores are only checked to be in range); the cache is checked by
counting calls into the real `Encoder.encode`, not by timing.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from l2v_cli.encoding.encoder import Encoder
from l2v_cli.errors import L2VError
from l2v_cli.eval import evaluate, get_task, parse_tasks
from l2v_cli.eval import metrics
from l2v_cli.eval.cache import CachedEncoder, EmbeddingCache, model_fingerprint
from l2v_cli.eval.runner import compare, parse_model_spec, run_mteb, write_json
from l2v_cli.eval.tasks import as_prefix, eval_data_dir, parse_protocols
from l2v_cli.modeling.tiny import save_tiny_model

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
    """Point L2V_CACHE (embeddings, tiny models) at a fresh folder for this module."""
    root = tmp_path_factory.mktemp("l2v-cache")
    old = os.environ.get("L2V_CACHE")
    os.environ["L2V_CACHE"] = str(root)
    yield root
    if old is None:
        os.environ.pop("L2V_CACHE", None)
    else:
        os.environ["L2V_CACHE"] = old


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, cache_env) -> Path:
    return save_tiny_model("llama", tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="module")
def tiny(tiny_dir) -> Encoder:
    return Encoder.from_pretrained(tiny_dir, dtype="float32")


@pytest.fixture
def count_encode(monkeypatch):
    """Count calls into the model (Encoder.encode) and the texts they carry."""
    calls = {"calls": 0, "texts": 0}
    real = Encoder.encode

    def spy(self, texts, *a, **kw):
        calls["calls"] += 1
        calls["texts"] += len(list(texts))
        return real(self, texts, *a, **kw)

    monkeypatch.setattr(Encoder, "encode", spy)
    return calls


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# --------------------------------------------------------------------------- metrics (by hand)
def test_spearman_with_a_tie_matches_hand_computation():
    # ranks x = 1..5, y = [1, 2, 3.5, 5, 3.5]; Σdxdy = 8, Σdx² = 10, Σdy² = 9.5 -> 8 / √95
    assert metrics.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    assert metrics.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(metrics.spearman([1, 2, 3], [1, 1, 1]))  # constant side: undefined


def test_ndcg_at_10_graded_relevance_on_hand_made_ranking():
    qrels = {"q1": {"d1": 1, "d2": 2}, "q2": {"d5": 1}, "q3": {"d9": 0}}  # q3 has nothing relevant: skipped
    ranking = {"q1": ["d3", "d2", "d1"], "q2": ["d5"], "q3": ["d9"]}
    # q1: DCG = 0 + 2/log2(3) + 1/log2(4); IDCG = 2/log2(2) + 1/log2(3); q2: 1
    q1 = (2 / math.log2(3) + 1 / 2) / (2 + 1 / math.log2(3))
    assert metrics.ndcg_at_k(qrels, ranking, 10) == pytest.approx((q1 + 1) / 2)
    assert q1 == pytest.approx(0.66967, abs=1e-5)
    # a relevant document below the cut-off does not count; an unranked query scores 0
    assert metrics.ndcg_at_k({"q": {"d": 1}}, {"q": ["x"] * 10 + ["d"]}, 10) == 0.0
    assert metrics.ndcg_at_k({"q": {"d": 1}}, {}, 10) == 0.0


def test_recall_at_k():
    qrels = {"q1": {"d1": 1, "d2": 1}, "q2": {"d5": 1}}
    ranking = {"q1": ["d3", "d2", "d1"], "q2": ["d5", "d1"]}
    assert metrics.recall_at_k(qrels, ranking, 2) == pytest.approx((0.5 + 1.0) / 2)
    assert metrics.recall_at_k(qrels, ranking, 100) == pytest.approx(1.0)


def test_accuracy_and_v_measure_on_toy_labels():
    assert metrics.accuracy(["a", "b", "c", "a"], ["a", "b", "a", "a"]) == 0.75
    assert metrics.v_measure([0, 0, 1, 1], [1, 1, 0, 0]) == pytest.approx(1.0)  # names do not matter
    assert metrics.v_measure([0, 0, 1, 1], [0, 0, 0, 0]) == pytest.approx(0.0)  # homogeneity 0
    # every item its own cluster: homogeneity 1, completeness 1 - H(K|C)/H(K) = 1 - 1/2 -> V = 2/3
    assert metrics.v_measure([0, 0, 1, 1], [0, 1, 2, 3]) == pytest.approx(2 / 3)


def test_top_k_orders_by_score_and_breaks_ties_by_corpus_order():
    scores = np.array([[0.1, 0.9, 0.5, 0.9]])
    assert metrics.top_k(scores, ["a", "b", "c", "d"], 3) == [["b", "d", "c"]]
    assert metrics.top_k(scores, ["a", "b", "c", "d"], 10) == [["b", "d", "c", "a"]]


def test_cosine_helpers():
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    b = np.array([[2.0, 0.0], [0.0, 3.0]])
    np.testing.assert_allclose(metrics.cosine_pairs(a, b), [1.0, 1 / math.sqrt(2)])
    np.testing.assert_allclose(metrics.cosine_matrix(a, b), [[1, 0], [1 / math.sqrt(2), 1 / math.sqrt(2)]], atol=1e-6)


# --------------------------------------------------------------------------- task names and specs
def test_unknown_task_lists_valid_ones_with_did_you_mean():
    with pytest.raises(L2VError) as e:
        parse_tasks("stsb,scifakt")
    msg = e.value.line()
    assert "scifakt" in msg and "scifact" in msg and "--tasks" in msg
    with pytest.raises(L2VError, match="unknown task kind 'retreival'.*retrieval"):
        get_task("retreival:/tmp")
    with pytest.raises(L2VError, match="listed twice"):
        parse_tasks("stsb,stsb")


def test_protocols_parse_to_both_by_default_and_refuse_unknown_names():
    assert parse_protocols(None) == parse_protocols("both") == ("no_prompt", "instruction")
    assert parse_protocols("instruction,no-prompt") == ("no_prompt", "instruction")  # table order
    assert parse_protocols("no_prompt") == ("no_prompt",)
    with pytest.raises(L2VError, match="unknown protocol 'instructoin'.*instruction"):
        parse_protocols("instructoin")


def test_no_prompt_runs_the_bare_text_and_instruction_the_tasks_prefix(tiny, monkeypatch):
    seen = []
    real = Encoder.encode

    def spy(self, texts, instruction=None, **kw):
        seen.append(instruction)
        return real(self, texts, instruction=instruction, **kw)

    monkeypatch.setattr(Encoder, "encode", spy)
    res = evaluate(tiny, "stsb", limit=8, cache=False)
    assert seen == [None, "Retrieve semantically similar text:\n"]
    assert list(res["tasks"]["stsb"]) == ["no_prompt", "instruction"]
    assert res["tasks"]["stsb"]["no_prompt"]["instruction"] is None
    assert res["settings"]["protocols"] == ["no_prompt", "instruction"]
    # different inputs, different scores (the tiny model is not blind to its input)
    assert res["tasks"]["stsb"]["no_prompt"]["spearman"] != res["tasks"]["stsb"]["instruction"]["spearman"]


def test_instruction_prefix_and_no_instructions():
    assert as_prefix("Retrieve semantically similar text") == "Retrieve semantically similar text:\n"
    assert as_prefix("Do X.") == "Do X:\n" and as_prefix(None) is None
    assert get_task("scifact").instruction.startswith("Given a scientific claim")
    assert get_task("scifact", instructions=False).instruction is None


def test_model_spec_mode_suffix():
    assert parse_model_spec("smollm2-135m@causal") == ("smollm2-135m", False)
    assert parse_model_spec("x@bidirectional") == ("x", True)
    assert parse_model_spec("x") == ("x", None)
    assert parse_model_spec("x", True) == ("x", True)
    with pytest.raises(L2VError, match="attention mode once"):
        parse_model_spec("x@causal", True)


def test_shipped_data_is_found():
    d = eval_data_dir()
    assert (d / "stsb" / "test.jsonl").is_file() and (d / "scifact" / "qrels" / "test.tsv").is_file()


# --------------------------------------------------------------------------- shipped tasks, end to end
@pytest.mark.parametrize("name,metric,limit", [
    ("stsb", "spearman", 16), ("stsb-dev", "spearman", 16), ("scifact", "ndcg@10", 2),
    ("banking77", "accuracy", 24), ("stackoverflow", "v_measure", 24),
])
def test_each_shipped_task_runs_and_scores_in_range(tiny, name, metric, limit):
    task = get_task(name, limit=limit)
    if hasattr(task, "n_experiments"):
        task.n_experiments = 3  # the protocol's 10 repeats only cost time here
    res = evaluate(tiny, [task], limit=limit, cache=False, protocols="instruction")
    r = res["tasks"][name]["instruction"]
    assert set(res["tasks"][name]) == {"instruction"}
    assert r["main_metric"] == metric and r["n"] == limit
    lo = -100 if metric == "spearman" else 0
    for m, v in r.items():
        if m in (metric, "recall@100", "accuracy_std", "v_measure_std"):
            assert lo <= v <= 100, (m, v)
    assert r["time_s"] >= 0 and r["encoded"] > 0 and r["cached"] == 0
    if name == "scifact":
        assert r["docs"] == len({d for q in get_task("scifact", limit=2).load().qrels.values() for d in q}) + 20


def test_retrieval_limit_keeps_relevant_docs_and_queries_use_the_instruction(tiny, monkeypatch):
    task = get_task("scifact", limit=3).load()
    assert len(task.qids) == 3
    assert all(d in task.doc_ids for q in task.qids for d in task.qrels[q])
    seen = []
    real = Encoder.encode

    def spy(self, texts, instruction=None, **kw):
        seen.append((len(texts), instruction))
        return real(self, texts, instruction=instruction, **kw)

    monkeypatch.setattr(Encoder, "encode", spy)
    task.run(tiny)
    assert seen[0] == (3, "Given a scientific claim, retrieve documents that support or refute the claim:\n")
    assert seen[1] == (len(task.docs), None)  # documents: no instruction


# --------------------------------------------------------------------------- cache
def test_second_run_is_served_from_the_cache(tiny, tiny_dir, count_encode):
    first = evaluate(tiny, "stsb,stackoverflow", limit=12, protocols="instruction")
    assert count_encode["calls"] == 2 and first["tasks"]["stsb"]["instruction"]["encoded"] == 24
    count_encode.update(calls=0, texts=0)
    second = evaluate(tiny, "stsb,stackoverflow", limit=12, protocols="instruction")
    assert count_encode["calls"] == 0  # nothing reached the model
    s1, s2 = first["tasks"]["stsb"]["instruction"], second["tasks"]["stsb"]["instruction"]
    assert s2["cached"] == 24 and s2["encoded"] == 0
    assert s2["spearman"] == pytest.approx(s1["spearman"])
    # another instruction, attention mode or --no-cache is a different entry / no cache
    evaluate(tiny, "stsb", limit=12, protocols="no-prompt")
    assert count_encode["calls"] == 1
    evaluate(tiny, "stsb", limit=12, cache=False)  # both protocols, nothing from the cache
    assert count_encode["calls"] == 3
    bidir = evaluate(str(tiny_dir) + "@bidirectional", "stsb", limit=12, dtype="float32",
                     protocols="instruction")
    assert count_encode["calls"] == 4 and bidir["settings"]["attention"] == "bidirectional"


def test_cache_entries_are_atomic_npy_files_keyed_by_model_files(tiny, tiny_dir, tmp_path):
    wrapped = CachedEncoder(tiny, root=tmp_path)
    emb = wrapped.encode(["a b c", "d e"], instruction="X: ")
    files = list(tmp_path.rglob("*.npy"))
    assert len(files) == 1 and not list(tmp_path.rglob("*.tmp"))
    np.testing.assert_array_equal(np.load(files[0]), emb)
    again = CachedEncoder(tiny, root=tmp_path)
    np.testing.assert_array_equal(again.encode(["a b c", "d e"], instruction="X: "), emb)
    assert (again.encoded, again.cached) == (0, 2)
    # a corrupt entry is a miss, then rewritten
    files[0].write_bytes(b"garbage")
    third = CachedEncoder(tiny, root=tmp_path)
    third.encode(["a b c", "d e"], instruction="X: ")
    assert third.encoded == 2 and np.load(files[0]).shape == emb.shape
    assert EmbeddingCache.key({"a": 1}, None, ["x"]) != EmbeddingCache.key({"a": 1}, None, ["y"])


def test_fingerprint_is_the_content_of_weights_config_and_tokenizer(tiny_dir, tmp_path):
    """The same files in another folder (every run's copy of the base model) share cache entries;
    a changed byte in the weights, the config or the tokenizer gives a new key; a touch does not."""
    import shutil

    fp = model_fingerprint(tiny_dir)
    copy = shutil.copytree(tiny_dir, tmp_path / "copy")
    assert model_fingerprint(copy) == fp
    st = next(copy.glob("*.safetensors"))
    os.utime(st, ns=(st.stat().st_atime_ns, st.stat().st_mtime_ns + 10**9))
    assert model_fingerprint(copy) == fp  # same bytes
    (copy / "unrelated-notes.json").write_text("{}")
    assert model_fingerprint(copy) == fp  # a file the encoder never reads
    data = bytearray(st.read_bytes())
    data[-1] ^= 1  # one bit of the last weight
    st.write_bytes(bytes(data))
    assert model_fingerprint(copy) != fp  # the memo is keyed by size/mtime/inode, so it sees the rewrite
    tok = tmp_path / "tok"
    shutil.copytree(tiny_dir, tok)
    cfg = tok / "tokenizer_config.json"
    assert cfg.exists()
    cfg.write_text(cfg.read_text().replace("{", '{"model_max_length": 7, ', 1))
    assert model_fingerprint(tok) != fp
    assert model_fingerprint(tmp_path / "missing") is None and model_fingerprint(None) is None
    (tmp_path / "no-weights").mkdir()
    (tmp_path / "no-weights" / "config.json").write_text("{}")
    assert model_fingerprint(tmp_path / "no-weights") is None  # nothing to key on: no caching


def test_two_runs_from_one_model_share_the_baseline_rows(tiny_dir, tmp_path):
    """`enable-bidir` writes the same bytes in every run folder, so the ablation's causal and
    bidirectional baseline rows of a second run (or recipe) from the same model come from the
    cache; a different model does not."""
    from l2v_cli.stages.enable_bidir import enable_bidir

    a, b = (tmp_path / "run1" / "01_enable-bidir", tmp_path / "run2" / "01_enable-bidir")
    for out in (a, b):
        enable_bidir(str(tiny_dir), out)  # with its probe, as a run does
    assert model_fingerprint(a) == model_fingerprint(b)
    first = evaluate(f"{a}@causal", "stsb", limit=8, dtype="float32", protocols="no-prompt")
    second = evaluate(f"{b}@causal", "stsb", limit=8, dtype="float32", protocols="no-prompt")
    assert first["tasks"]["stsb"]["no_prompt"]["encoded"] == 16
    assert (second["tasks"]["stsb"]["no_prompt"]["encoded"], second["tasks"]["stsb"]["no_prompt"]["cached"]) == (0, 16)
    other = save_tiny_model("qwen2", tmp_path / "other")
    assert model_fingerprint(other) != model_fingerprint(a)


# --------------------------------------------------------------------------- your own data by path
def make_user_data(root: Path) -> dict[str, str]:
    sts = write_jsonl(root / "sts.jsonl", [
        {"sentence1": "a cat sits on the mat", "sentence2": "a cat is on the mat", "score": 4.6},
        {"sentence1": "stocks fell sharply", "sentence2": "a cat is on the mat", "score": 0.2},
        {"sentence1": "the sky is blue", "sentence2": "blue is the colour of the sky", "score": 4.0},
        {"sentence1": "he plays guitar", "sentence2": "she reads a book", "score": 0.8},
    ])
    texts = ["the quick brown fox", "lorem ipsum dolor", "a stitch in time", "all that glitters"]
    write_jsonl(root / "ret" / "corpus.jsonl", [{"_id": f"d{i}", "title": "", "text": t} for i, t in enumerate(texts)])
    write_jsonl(root / "ret" / "queries.jsonl", [{"_id": i, "text": t} for i, t in enumerate(texts)])
    (root / "ret" / "qrels").mkdir()
    (root / "ret" / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{i}\td{i}\t1\n" for i in range(len(texts))))
    rows = [{"text": f"{w} number {i}", "label": w} for i in range(6) for w in ("apple", "car")]
    write_jsonl(root / "cls" / "train.jsonl", rows)
    write_jsonl(root / "cls" / "test.jsonl", rows[:6])
    clu = write_jsonl(root / "clu.jsonl", [{"text": r["text"], "label": i % 3} for i, r in enumerate(rows)])
    return {"sts": f"sts:{sts}", "retrieval": f"retrieval:{root / 'ret'}",
            "classification": f"classification:{root / 'cls'}", "clustering": f"clustering:{clu}"}


def test_user_data_sets_by_kind_and_path(tiny, tmp_path):
    specs = make_user_data(tmp_path)
    res = evaluate(tiny, list(specs.values()), protocols="no-prompt", cache=False)
    assert set(res["tasks"]) == set(specs.values())
    t = {name: r["no_prompt"] for name, r in res["tasks"].items()}
    # without an instruction each query is its own document: cosine 1, ranked first
    assert t[specs["retrieval"]]["ndcg@10"] == pytest.approx(100.0)
    assert t[specs["retrieval"]]["recall@100"] == pytest.approx(100.0)
    assert t[specs["retrieval"]]["n"] == 4 and t[specs["retrieval"]]["docs"] == 4
    assert t[specs["sts"]]["n"] == 4 and -100 <= t[specs["sts"]]["spearman"] <= 100
    assert 0 <= t[specs["classification"]]["accuracy"] <= 100 and t[specs["classification"]]["n"] == 6
    assert 0 <= t[specs["clustering"]]["v_measure"] <= 100 and t[specs["clustering"]]["clusters"] == 3


def test_classification_undersamples_like_mteb(tmp_path):
    specs = make_user_data(tmp_path)
    task = get_task(specs["classification"]).load()
    exps = task.experiments()
    assert len(exps) == 10
    for chosen in exps:  # at most 8 per label, from the train split, drawn afresh each time
        labels = [task.train_y[i] for i in chosen]
        assert labels.count("apple") == 6 and labels.count("car") == 6  # only 6 of each exist
    big = get_task("banking77").load()
    e = big.experiments()
    assert all(len(c) == 8 * 77 for c in e) and e[0] != e[1]


def test_a_limited_classification_task_still_trains_on_8_per_label():
    """--limit shrinks the test split to N rows and the train pool to 16 rows per label, so each
    experiment still fits on 8 examples of every label (as the full protocol), drawn afresh."""
    full = get_task("banking77").load()
    small = get_task("banking77", limit=300).load()
    assert len(small.test_y) == 300 and len(full.test_y) == 3080
    pool = {y: small.train_y.count(y) for y in set(full.train_y)}
    assert len(pool) == 77 and set(pool.values()) == {16}
    e = small.experiments()
    assert all(len(c) == 8 * 77 for c in e) and e[0] != e[1]
    assert set(small.train_x) <= set(full.train_x)
    assert get_task("banking77", limit=300).load().train_x == small.train_x  # seeded
    # control: the full train split has many more rows per label than the pool
    assert min(full.train_y.count(y) for y in pool) > 16
    # a limit at or above the train split's size keeps all of it, as for every other task kind
    assert get_task("banking77", limit=len(full.train_y)).load().train_x == full.train_x


# --------------------------------------------------------------------------- bad layouts
@pytest.mark.parametrize("kind,setup,expect", [
    ("sts", lambda d: write_jsonl(d / "s.jsonl", [{"sentence1": "a", "sentence2": "b", "score": 1},
                                                   {"sentence1": "a", "score": 2}]),
     r"line 2 has no 'sentence2' key.*s\.jsonl:2"),
    ("sts", lambda d: write_jsonl(d / "s.jsonl", [{"sentence1": "a", "sentence2": "b", "score": "high"}]),
     r"line 1: 'score' is a JSON string, not a number.*s\.jsonl:1"),
    ("sts", lambda d: write_jsonl(d / "s.jsonl", ['{"sentence1": "a",']), r"line 1 is not valid JSON.*s\.jsonl:1"),
    ("clustering", lambda d: write_jsonl(d / "s.jsonl", [{"text": "a", "label": 1}, {"text": "b"}]),
     r"line 2 has no 'label' key.*s\.jsonl:2"),
])
def test_bad_jsonl_layouts_name_file_line_and_key(tmp_path, kind, setup, expect):
    path = setup(tmp_path)
    with pytest.raises(L2VError, match=expect):
        get_task(f"{kind}:{path}").load()


def test_bad_folder_layouts_name_the_missing_file_or_line(tmp_path):
    specs = make_user_data(tmp_path)
    (tmp_path / "cls" / "test.jsonl").unlink()
    with pytest.raises(L2VError, match=r"cls/test\.jsonl does not exist"):
        get_task(specs["classification"]).load()
    (tmp_path / "ret" / "qrels" / "test.tsv").write_text("0\td0\n")
    with pytest.raises(L2VError, match=r"line 1 has 2 tab-separated columns, expected 3.*test\.tsv:1"):
        get_task(specs["retrieval"]).load()
    (tmp_path / "ret" / "qrels" / "test.tsv").write_text("0\tnope\t1\n")
    with pytest.raises(L2VError, match=r"none of the corpus ids"):
        get_task(specs["retrieval"]).load()
    (tmp_path / "ret" / "corpus.jsonl").unlink()
    with pytest.raises(L2VError, match=r"corpus\.jsonl does not exist"):
        get_task(specs["retrieval"]).load()
    with pytest.raises(L2VError, match="must be a folder"):
        get_task(f"retrieval:{tmp_path / 'sts.jsonl'}").load()


def test_bad_task_data_fails_before_the_model_loads(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "x"}])
    with pytest.raises(L2VError, match="bad.jsonl:1"):
        evaluate("no-such-model-anywhere", f"sts:{bad}")


# --------------------------------------------------------------------------- results, compare, JSON
def test_compare_and_atomic_json(tmp_path):
    a = {"tasks": {"stsb": {"no_prompt": {"spearman": 40.0, "n": 5, "main_metric": "spearman"},
                            "instruction": {"spearman": 50.0, "n": 5, "main_metric": "spearman"}}}}
    b = {"tasks": {"stsb": {"no_prompt": {"spearman": 15.5, "n": 5, "main_metric": "spearman"}}}}
    assert compare(a, b) == {"stsb (no prompt)": {"spearman": 24.5}}  # only what both have
    out = write_json(tmp_path / "r.json", {"x": float("nan"), "y": np.float32(1.5)})
    assert json.loads(out.read_text()) == {"x": None, "y": 1.5}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


# --------------------------------------------------------------------------- mteb bridge
def test_mteb_missing_is_a_clear_error(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "mteb", None)  # import mteb -> ImportError
    with pytest.raises(L2VError, match="pip install mteb"):
        run_mteb(tiny, "STSBenchmark")


def test_mteb_protocol_offline_with_injected_data(tiny):
    """Only where mteb is installed (it is not a dependency): a real mteb STS task, its data
    injected in memory instead of downloaded, run through our encoder wrapper."""
    mteb = pytest.importorskip("mteb")
    datasets = pytest.importorskip("datasets")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task = mteb.get_task("STSBenchmark")
    rows = {"sentence1": ["a cat sits", "a dog runs", "the sky is blue", "I like tea"],
            "sentence2": ["a cat is sitting", "a man cooks", "blue sky", "tea is nice"], "score": [4.5, 0.5, 4.0, 3.0]}
    task.dataset = {"default": datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows)})}
    task.data_loaded = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_mteb(tiny, ["STSBenchmark"], tasks=[task])
    assert res["STSBenchmark"]["main_metric"] == "cosine_spearman"
    assert -100 <= res["STSBenchmark"]["main_score"] <= 100


# --------------------------------------------------------------------------- CLI
def l2v(*args, env_extra=None, timeout=240):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "l2v_cli", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=timeout)


def test_cli_compare_writes_json_and_prints_both_models_with_delta(tiny_dir, cache_env, tmp_path):
    out = tmp_path / "res.json"
    p = l2v("eval", str(tiny_dir), "--tasks", "stsb", "--limit", "8", "--causal",
            "--compare", f"{tiny_dir}@bidirectional", "--output", str(out), "--dtype", "float32")
    assert p.returncode == 0, p.stderr
    data = json.loads(out.read_text())
    a, b = data["runs"]
    assert a["settings"]["attention"] == "causal" and b["settings"]["attention"] == "bidirectional"
    for protocol, label in (("no_prompt", "no prompt"), ("instruction", "instruction")):
        delta = a["tasks"]["stsb"][protocol]["spearman"] - b["tasks"]["stsb"][protocol]["spearman"]
        assert data["delta"][f"stsb ({label})"]["spearman"] == pytest.approx(delta)
    assert "(causal)" in p.stdout and "(bidirectional)" in p.stdout and "Δ (A − B)" in p.stdout
    assert str(out) in p.stdout.replace("\n", "")


def test_cli_repeated_compare_prints_one_row_per_model(tiny_dir, cache_env, tmp_path):
    out = tmp_path / "three.json"
    p = l2v("eval", f"{tiny_dir}@causal", "--tasks", "stsb,banking77", "--limit", "8", "--dtype", "float32",
            "--compare", f"{tiny_dir}@bidirectional", "--compare", "tiny-qwen2@causal", "--output", str(out))
    assert p.returncode == 0, p.stderr
    runs = json.loads(out.read_text())["runs"]
    assert [r["settings"]["attention"] for r in runs] == ["causal", "bidirectional", "causal"]
    assert all(set(r["tasks"]) == {"stsb", "banking77"} for r in runs)
    rows = [line for line in p.stdout.splitlines() if "(causal)" in line or "(bidirectional)" in line]
    assert len(rows) == 3  # one table row per model, each with both tasks' main scores, both protocols
    for r, line in zip(runs, rows):
        cells = [f"{r['tasks'][t][p][m]:.2f}" for t, m in (("stsb", "spearman"), ("banking77", "accuracy"))
                 for p in ("no_prompt", "instruction")]
        assert re.findall(r"-?\d+\.\d\d\b", line) == cells, (line, cells)  # in column order


def test_cli_errors_are_one_line(tmp_path):
    p = l2v("eval", "tiny-llama", "--tasks", "stbs")
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        "l2v: error: unknown task 'stbs' (--tasks) — fix: did you mean 'stsb' or 'stsb-dev' or 'sts:PATH'?"]
