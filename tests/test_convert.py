"""Spec: `l2v convert` chains the stages, skips what is done, refuses silent invalidation, survives kill -9."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

# Small enough for seconds per stage; checkpoints every 2 steps so a kill mid-stage has one to resume.
TINY = ["mntp.data.max_samples=60", "simcse.data.max_samples=60", "supervised.data.max_samples=16",
        "mntp.train.max_steps=4", "simcse.train.max_steps=4", "supervised.train.max_steps=4",
        "mntp.train.save_steps=2", "simcse.train.save_steps=2", "supervised.train.save_steps=2",
        # keep every checkpoint: with the recipe's limit of 1, step-000002 of the tiny model can be
        # written and deleted between two polls of the kill test (it waits for that folder)
        "mntp.train.save_total_limit=4", "simcse.train.save_total_limit=4", "supervised.train.save_total_limit=4",
        "eval.limit=16"]


def convert(out, *extra, wait=True):
    argv = [sys.executable, "-m", "l2v_cli", "convert", "tiny-llama", "--recipe", "smoke", "-o", str(out),
            *TINY, *extra]
    if not wait:
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    return subprocess.run(argv, capture_output=True, text=True, timeout=900)


def final_weights(out):
    return load_file(str(out / "final" / "model.safetensors"))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("convert") / "run"
    t0 = time.time()
    p = convert(out)
    assert p.returncode == 0, p.stderr[-3000:]
    p.seconds = time.time() - t0
    return out, p


def test_smoke_conversion_writes_every_stage_and_the_final_model(straight):
    out, p = straight
    names = ["01_enable-bidir", "02_train-mntp", "03_train-simcse", "04_train-supervised", "final", "eval"]
    for name in names:
        assert (out / name / "DONE.json").exists(), name
    assert (out / "final" / "modules.json").exists() and (out / "final" / "model.safetensors").exists()
    result = json.loads((out / "eval" / "eval.json").read_text())
    assert set(result["tasks"]) == {"stsb"}
    assert "stage plan:" in p.stderr and "converted in" in p.stderr


def test_rerun_skips_completed_stages(straight):
    out, _ = straight
    before = (out / "final" / "model.safetensors").stat().st_mtime_ns
    p = convert(out)
    assert p.returncode == 0, p.stderr[-2000:]
    plan = p.stderr.split("stage plan:")[1]
    assert plan.count(" done ") == 6
    assert (out / "final" / "model.safetensors").stat().st_mtime_ns == before


def test_changed_recipe_is_refused_naming_the_first_changed_stage(straight):
    out, _ = straight
    p = convert(out, "simcse.scale=30")
    assert p.returncode == 2
    last = p.stderr.strip().splitlines()[-1]
    assert "03_train-simcse" in last and "--force" in last
    # The plan shows which stages a --force run would redo.
    assert "02_train-mntp        done" in p.stderr and "03_train-simcse      changed" in p.stderr


def test_dry_run_prints_plan_and_launch_commands_and_writes_nothing(tmp_path):
    out = tmp_path / "dry"
    p = convert(out, "--dry-run", "--gpus", "2", "--deepspeed", "zero2")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "train-mntp: $ " in p.stderr and "--num_gpus 2" in p.stderr and "zero2.json" in p.stderr
    assert not out.exists()


# Where the kill lands: after the run reaches a point, plus a random fraction of a second (mid-step,
# mid-save). Progress points, not wall-clock fractions, so a faster or slower machine cannot move the
# kill past the end of the run.
KILL_AFTER = ["02_train-mntp/step-000002", "03_train-simcse/step-000002", "04_train-supervised/step-000002"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_9_then_rerun_equals_an_uninterrupted_run(straight, tmp_path, seed):
    ref, _ = straight
    out = tmp_path / "killed"
    marker, deadline = out / KILL_AFTER[seed], time.time() + 900
    proc = convert(out, wait=False)
    while not marker.exists():
        assert proc.poll() is None, f"the run ended before reaching {KILL_AFTER[seed]}"
        assert time.time() < deadline, f"{KILL_AFTER[seed]} never appeared"
        time.sleep(0.05)
    time.sleep(random.Random(seed).uniform(0.0, 0.5))
    assert proc.poll() is None, "the run finished before the kill: nothing was tested"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "eval" / "DONE.json").exists()  # the run did not complete
    p = convert(out)
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = final_weights(ref), final_weights(out)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k].float(), b[k].float(), atol=1e-5, rtol=0)


def test_ablation_scores_every_step_of_the_chain_and_resumes_per_point(tmp_path):
    out = tmp_path / "run"
    extra = ["eval.ablation=true", "eval.tasks=[stsb,banking77]", "eval.task_limits={banking77: 24}"]
    p = convert(out, *extra)
    assert p.returncode == 0, p.stderr[-3000:]
    table = json.loads((out / "eval" / "ablation.json").read_text())
    labels = [r["model"] for r in table["rows"]]
    assert labels == ["causal", "bidirectional", "+ mntp", "+ simcse", "+ supervised (final)"]
    assert table["rows"][0]["spec"].endswith("01_enable-bidir@causal")
    assert table["rows"][-1]["spec"] == str(out / "final")
    assert table["tasks"]["banking77"]["limit"] == 24 and table["tasks"]["stsb"]["limit"] == 16
    # Both protocols side by side for every task: the bare text (how users call the export) and
    # the task's instruction.
    cols = ["stsb (no prompt)", "stsb (instruction)", "banking77 (no prompt)", "banking77 (instruction)"]
    assert table["columns"] == cols
    for r in table["rows"]:
        assert list(r["scores"]) == cols
        assert all(-100 <= v <= 100 for v in r["scores"].values())
    # Same weights, other attention: the causal and bidirectional rows differ.
    assert table["rows"][0]["scores"]["stsb (no prompt)"] != table["rows"][1]["scores"]["stsb (no prompt)"]
    # The intermediate stages were exported as full models; the final row is eval.json.
    for stage in ("02_train-mntp", "03_train-simcse"):
        assert (out / "eval" / "models" / stage / "model.safetensors").exists()
    final = json.loads((out / "eval" / "eval.json").read_text())
    assert final == json.loads((out / "eval" / "supervised.json").read_text())
    # The summary: a stage table with timings and the ablation table; DONE.json records them.
    assert "Stages" in p.stderr and "Evaluation" in p.stderr and "+ supervised (final)" in p.stderr
    done = json.loads((out / "02_train-mntp" / "DONE.json").read_text())
    assert done["seconds"] > 0 and done["peak_rss_mb"] > 100

    # Killed during eval: the points already scored are not scored again.
    (out / "eval" / "DONE.json").unlink()
    (out / "eval" / "mntp.json").unlink()
    p = convert(out, *extra)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "eval: + mntp" in p.stderr and "eval: causal" not in p.stderr and "eval: bidirectional" not in p.stderr
    again = json.loads((out / "eval" / "ablation.json").read_text())
    def key(rows):
        return [(r["model"], r["spec"], r["scores"]) for r in rows]

    assert key(again["rows"]) == key(table["rows"])  # same scores; resumed rows keep their model specs


def test_task_limit_for_an_unlisted_task_is_refused_before_anything_runs(tmp_path):
    out = tmp_path / "run"
    p = convert(out, "eval.task_limits={scifact: 5}")
    assert p.returncode == 2 and "eval.task_limits names 'scifact'" in p.stderr
    assert not out.exists()
