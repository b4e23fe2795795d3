"""Spec: the benchmarks' command lines in the docs exist, and `bench sampling` (sampled against full
evaluation) computes its deltas and model-order agreement correctly and reuses the cache.

The sampling benchmark runs for real on a tiny random model with Banking77 (the cheap task);
its summary arithmetic is checked on rows worked out by hand.
"""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

from bench.eval_sampling import agreement, parser, run, sample_sizes, summarise
from bench.run import BENCHMARKS, BY_NAME_ONLY
from l2v_cli.modeling.tiny import save_tiny_model

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BENCH = re.compile(r"python -m bench\.run(?: [^`\n]*)?")


def bench_commands() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        for n, line in enumerate(doc.read_text().splitlines(), start=1):
            out += [(f"{doc.relative_to(ROOT)}:{n}", m.group(0)) for m in _BENCH.finditer(line)]
    return out


def check_bench_command(command: str) -> None:
    """Raise if the command names an unknown benchmark or an option none of its benchmarks has."""
    words = shlex.split(command.split("#")[0])[3:]
    names = []
    while words and not words[0].startswith("-"):
        names.append(words.pop(0))
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmark {unknown[0]!r}")
    names = names or [n for n in BENCHMARKS if n not in BY_NAME_ONLY]  # what a bare `bench.run` runs
    parsers = [importlib.import_module(BENCHMARKS[n]).parser() for n in names]
    left = [{w for w in p.parse_known_args(words)[1] if w.startswith("--")} for p in parsers]
    unknown = sorted(set.intersection(*left))  # all options go to every selected benchmark
    if unknown:
        raise ValueError(f"no benchmark of {names} takes {unknown[0]}")


def test_the_docs_name_benchmarks():
    assert len(bench_commands()) >= 4


@pytest.mark.parametrize("where,command", bench_commands())
def test_documented_bench_command_exists(where, command):
    check_bench_command(command)


def test_a_wrong_bench_command_is_caught():
    with pytest.raises(ValueError, match="unknown benchmark 'sampeling'"):
        check_bench_command("python -m bench.run sampeling")
    with pytest.raises(ValueError, match="takes --width"):
        check_bench_command("python -m bench.run matryoshka --width 64")
    check_bench_command("python -m bench.run sampling --limit scifact=30,100 --threads 1")
    with pytest.raises(ValueError, match="takes --limit"):  # a bare run does not include `sampling`
        check_bench_command("python -m bench.run --limit scifact=30")


# --------------------------------------------------------------------------- sampling: arithmetic
def test_agreement_counts_model_pairs_ordered_alike():
    full = {"a": 50.0, "b": 40.0, "c": 30.0}
    assert agreement({"a": 60.0, "b": 45.0, "c": 20.0}, full) == (3, 3)
    assert agreement({"a": 60.0, "b": 10.0, "c": 20.0}, full) == (2, 3)  # b and c swapped
    assert agreement({"a": 40.0, "b": 40.0, "c": 20.0}, full) == (2, 3)  # a sampled tie is not an order
    assert agreement({"a": 1.0, "b": 1.0}, {"a": 5.0, "b": 5.0}) == (1, 1)  # tied on both sides


def test_summary_is_the_sampled_minus_full_per_task_protocol_and_size():
    rows = [{"model": m, "task": "t", "protocol": "no_prompt", "limit": lim, "score": s}
            for m, lim, s in [("a", None, 50.0), ("b", None, 40.0), ("a", 30, 55.0), ("b", 30, 38.0)]]
    assert summarise(rows) == [{"task": "t", "protocol": "no_prompt", "limit": 30, "models": 2,
                                "mean_delta": 1.5, "max_abs_delta": 5.0, "pairs_ordered_alike": "1/1"}]


def test_sample_sizes_come_from_the_recipe_then_limit():
    a = parser().parse_args([])
    assert sample_sizes(a, ["scifact", "banking77"]) == {"scifact": [30], "banking77": [300]}  # cpu-demo's
    a = parser().parse_args(["--limit", "scifact=100,30", "--recipe", "cpu-demo-sup"])
    assert sample_sizes(a, ["scifact", "banking77"]) == {"scifact": [30, 100], "banking77": [300]}
    with pytest.raises(SystemExit, match="TASK=N"):
        sample_sizes(parser().parse_args(["--limit", "stsb=5"]), ["scifact"])


# --------------------------------------------------------------------------- sampling: end to end
def write_classification(root: Path) -> str:
    """A small classification set: 3 labels, 30 train and 20 test texts each."""
    import json

    root.mkdir()
    words = {"fruit": "apple pear plum fig", "car": "wheel engine brake tyre", "sea": "wave tide salt shell"}
    for split, n in (("train", 30), ("test", 20)):
        rows = [{"text": f"{w} {i} {words[y].split()[i % 4]}", "label": y} for y in words for i in range(n)
                for w in [words[y].split()[(i * 3) % 4]]]
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f"classification:{root}"


def test_sampling_bench_scores_full_and_sampled_and_a_rerun_encodes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("L2V_CACHE", str(tmp_path / "cache"))
    model = save_tiny_model("llama", tmp_path / "tiny")
    task = write_classification(tmp_path / "cls")
    argv = ["--models", f"{model}@causal,{model}@bidirectional", "--tasks", task,
            "--limit", f"{task}=12", "--threads", "1", "--dtype", "float32"]
    first = run(argv)
    assert [(r["model"].split("@")[1], r["protocol"], r["limit"]) for r in first["rows"]][:4] == [
        ("causal", "no_prompt", None), ("causal", "instruction", None),
        ("causal", "no_prompt", 12), ("causal", "instruction", 12)]
    assert len(first["rows"]) == 8 and len(first["evaluations"]) == 4
    full = {(r["model"], r["protocol"]): r["score"] for r in first["rows"] if r["limit"] is None}
    for r in first["rows"]:
        assert r["n"] == (12 if r["limit"] else 60)
        if r["limit"]:
            assert r["delta"] == pytest.approx(r["score"] - full[r["model"], r["protocol"]], abs=0.011)
    assert {(s["protocol"], s["models"], s["pairs_ordered_alike"][-2:]) for s in first["summary"]} == {
        ("no_prompt", 2, "/1"), ("instruction", 2, "/1")}
    assert first["encoded"] > 0 and all(c["wall_s"] >= 0 for c in first["evaluations"])
    again = run(argv)
    assert again["encoded"] == 0 and again["cached"] == first["encoded"] + first["cached"]
    assert again["rows"] == first["rows"]
