"""Spec: a training stage runs as 2 real processes (gloo on CPU) under torchrun and under DeepSpeed ZeRO-2.

The CLI starts the launcher as a child and never joins the process group itself.
"""

import json
import subprocess
import sys

import pytest

# A small data set seen several times: a tiny random model only measurably learns what it sees again.
OVERRIDES = ["mntp.data.max_samples=20", "mntp.train.max_steps=12", "mntp.train.learning_rate=2e-2",
             "mntp.train.save_steps=6", "mntp.train.per_device_batch_size=2"]


def run_cli(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "l2v_cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def check_two_rank_run(out):
    rec = json.loads((out / "stage.json").read_text())
    assert rec["world_size"] == 2
    seen = [json.loads((out / "ledger" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 12 * 2  # 12 steps x 2 rows on each rank
    for epoch in {e for e, _ in seen[0]}:  # within an epoch the ranks' shards are disjoint
        rows = [{i for e, i in s if e == epoch} for s in seen]
        assert rows[0] and rows[1] and not rows[0] & rows[1]
    losses = [json.loads(l)["loss"] for l in open(out / "metrics.jsonl") if '"loss"' in l]
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert (out / "step-000012").is_dir() and (out / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.distributed
def test_two_process_torchrun_ddp(tmp_path):
    out = tmp_path / "mntp"
    p = run_cli("train-mntp", "tiny-llama", "-o", str(out), "--recipe", "smoke", "--gpus", "2",
                "--launcher", "torchrun", "--master-port", "29631", *OVERRIDES)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "torch.distributed.run --nproc_per_node 2" in p.stderr  # the printed argv
    check_two_rank_run(out)


@pytest.mark.slow  # ~60 s; .ci/run also converts the smoke recipe under DeepSpeed ZeRO-2 after the tests
@pytest.mark.distributed
def test_two_process_deepspeed_zero2(tmp_path):
    out = tmp_path / "mntp"
    p = run_cli("train-mntp", "tiny-llama", "-o", str(out), "--recipe", "smoke", "--gpus", "2",
                "--deepspeed", "zero2", "--master-port", "29632", *OVERRIDES)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "--num_gpus 2" in p.stderr and "zero2.json" in p.stderr
    check_two_rank_run(out)
    assert (out / "step-000012" / "global_step12").is_dir()  # a DeepSpeed engine checkpoint


@pytest.mark.distributed
def test_a_failing_rank_stops_the_launch_with_its_error(tmp_path):
    out = tmp_path / "mntp"
    p = run_cli("train-mntp", "tiny-llama", "-o", str(out), "--recipe", "smoke", "--gpus", "2",
                "--launcher", "torchrun", "--master-port", "29633", *OVERRIDES,
                "mntp.data.path=data/unsup/no_such_file.txt")
    assert p.returncode != 0
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("l2v: error: stage failed:") and "no_such_file.txt" in last
    assert "Traceback" not in last
