"""Spec: past one machine. Two `l2v convert` processes started as two nodes on one box (as `srun`
would start them: through SLURM's environment or explicit --nodes/--node-rank/--master-addr/
--master-port) share one run folder; node 0 runs the single-process stages and writes the shared
files, node 1 only joins the training stages; the result equals a single-node 2-process run, with
torchrun and with DeepSpeed (--no_ssh per node). A rank or a whole node killed with kill -9 stops the
run within launcher.timeout_s (+30 s) with an error naming the rank and the log, and rerunning the
same commands resumes to the same weights.

Node 1 runs under umask 027, node 0 under 022: a file with mode 0640 in the run folder was created by
node 1, which shows what each node wrote.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

# Every stage but supervised (the same code path as SimCSE), a few steps each. MNTP runs long
# enough (200 steps, checkpoints every 10) for a kill after the first checkpoint to land mid-stage
# (with 40 steps the tiny model could finish the stage before the kill arrived).
OVERRIDES = ["stages=[enable-bidir,train-mntp,train-simcse,export,eval]", "mntp.data.max_samples=60",
             "simcse.data.max_samples=60", "mntp.train.max_steps=200", "mntp.train.save_steps=10",
             "simcse.train.max_steps=4", "simcse.train.save_steps=2", "eval.limit=16", "launcher.timeout_s=60"]
TIMEOUT_S = 60
# What node 1 may write in the run folder: its own logs and its rank's own training state.
NODE1_FILES = ("02_train-mntp.node1.log", "03_train-simcse.node1.log", "ledger/rank-1.json", "rng_state_1.pth",
               "zero_pp_rank_1_mp_rank_00_optim_states.pt")


def argv(out, *extra):
    return [sys.executable, "-m", "l2v_cli", "convert", "tiny-llama", "--recipe", "smoke", "-o", str(out),
            *OVERRIDES, *extra]


def start(out, *extra, env=None, node1=False):
    """One `l2v convert` in its own session (a node: killing its group kills its launcher and workers)."""
    return subprocess.Popen(argv(out, *extra), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, **(env or {})},
                            preexec_fn=(lambda: os.umask(0o027)) if node1 else None)


def finish(*procs, timeout=1200):
    errs = []
    for p in procs:
        _, err = p.communicate(timeout=timeout)
        errs.append(err)
    return errs


def two_nodes(out, port, *, slurm=False, launcher=("--launcher", "torchrun")):
    """Node 0 and node 1 of a 2-node run, one worker each, rendezvous on 127.0.0.1."""
    procs = []
    for rank in (0, 1):
        if slurm:  # as srun starts them: one process per node, the node's rank in SLURM_NODEID
            env = {"SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": str(rank), "SLURM_JOB_NODELIST": "localhost"}
            extra = ["--gpus", "1", *launcher, "--master-port", str(port)]
        else:
            env = {}
            extra = ["--gpus", "1", *launcher, "--nodes", "2", "--node-rank", str(rank),
                     "--master-addr", "127.0.0.1", "--master-port", str(port)]
        procs.append(start(out, *extra, env=env, node1=rank == 1))
    return procs


def weights(out):
    return load_file(str(Path(out) / "final" / "model.safetensors"))


def max_diff(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)


def files(out):
    return {str(p.relative_to(out)) for p in Path(out).rglob("*") if p.is_file()}


def written_by_node1(out):
    return sorted(str(p.relative_to(out)) for p in Path(out).rglob("*")
                  if p.is_file() and stat.S_IMODE(p.stat().st_mode) == 0o640)


def single_node(out, port, *launcher):
    p = subprocess.run(argv(out, "--gpus", "2", *launcher, "--master-port", str(port)), capture_output=True,
                       text=True, timeout=1200)
    assert p.returncode == 0, p.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def ref_torchrun(tmp_path_factory):
    return single_node(tmp_path_factory.mktemp("ref") / "torchrun", 29811, "--launcher", "torchrun")


@pytest.fixture(scope="module")
def ref_deepspeed(tmp_path_factory):
    return single_node(tmp_path_factory.mktemp("ref") / "deepspeed", 29821, "--deepspeed", "zero2")


def check_two_node_run(out, ref, errs):
    assert "node 1: following node 0's plan" in errs[1] and "node 1: done" in errs[1]
    assert max_diff(ref, out) <= 1e-6
    # The same files as the single-node run, plus the lock and node 1's logs ...
    assert files(out) - files(ref) == {".l2v-nodes.json", "02_train-mntp.node1.log", "03_train-simcse.node1.log"}
    # ... and node 1 wrote only its logs and its own rank's state.
    mine = written_by_node1(out)
    assert mine and all(p.endswith(NODE1_FILES) for p in mine), mine
    assert not any(("DONE.json" in p or p.startswith(("01_", "final", "eval"))) for p in mine)


@pytest.mark.slow
def test_two_nodes_torchrun_explicit_options_equal_one_node_two_processes(ref_torchrun, tmp_path):
    out = tmp_path / "two-nodes"
    procs = two_nodes(out, 29831)
    errs = finish(*procs)
    assert [p.returncode for p in procs] == [0, 0], errs[0][-2000:] + errs[1][-2000:]
    check_two_node_run(out, ref_torchrun, errs)


@pytest.mark.slow
def test_two_nodes_deepspeed_no_ssh_from_slurm_env_equal_one_node_two_processes(ref_deepspeed, tmp_path):
    out = tmp_path / "two-nodes"
    procs = two_nodes(out, 29841, slurm=True, launcher=("--deepspeed", "zero2"))
    errs = finish(*procs)
    assert [p.returncode for p in procs] == [0, 0], errs[0][-2000:] + errs[1][-2000:]
    assert "--no_ssh --num_nodes 2 --node_rank 1 --master_addr localhost" in errs[1]
    check_two_node_run(out, ref_deepspeed, errs)


def wait_for(path, procs, deadline_s=1200):
    deadline = time.time() + deadline_s
    while not path.exists():
        assert all(p.poll() is None for p in procs), f"a node ended before {path} appeared"
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def worker_of_rank(proc, rank):
    for c in psutil.Process(proc.pid).children(recursive=True):
        try:
            if "l2v_cli.stages.worker" in c.cmdline() and c.environ().get("RANK") == str(rank):
                return c
        except psutil.Error:
            continue
    raise AssertionError(f"no worker of rank {rank}")


@pytest.mark.slow
def test_kill_9_of_a_deepspeed_rank_stops_the_run_naming_it_and_rerun_resumes(ref_deepspeed, tmp_path):
    out = tmp_path / "killed"
    extra = ["--gpus", "2", "--deepspeed", "zero2", "--master-port", "29851"]
    proc = start(out, *extra)
    wait_for(out / "02_train-mntp" / "step-000010", [proc])
    time.sleep(random.Random(0).uniform(0.0, 0.3))
    victim = worker_of_rank(proc, 1)
    t_kill = time.time()
    victim.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=TIMEOUT_S + 120)
    stopped_after = time.time() - t_kill
    assert proc.returncode == 2 and stopped_after <= TIMEOUT_S + 30, (proc.returncode, stopped_after)
    last = err.strip().splitlines()[-1]
    assert last.startswith("l2v: error: stage failed: rank 1 (pid ") and "died without an error" in last, last
    assert f"full log: {out / '02_train-mntp.log'}" in last and "Traceback" not in last
    assert not (out / "02_train-mntp" / "stage.json").exists()  # killed mid-stage
    p = subprocess.run(argv(out, *extra), capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stderr[-3000:]
    assert re.search(r"02_train-mntp +resume", p.stderr), p.stderr[-2000:]
    assert max_diff(ref_deepspeed, out) <= 1e-5
    print(f"\nrank kill: l2v exited {stopped_after:.1f}s after kill -9 of rank 1")


@pytest.mark.slow
def test_kill_9_of_node_1_stops_node_0_and_rerun_of_both_resumes(ref_torchrun, tmp_path):
    out = tmp_path / "killed"
    procs = two_nodes(out, 29861)
    wait_for(out / "02_train-mntp" / "step-000010", procs)
    t_kill = time.time()
    # node 1 lost: its l2v, launcher and worker (torchrun starts workers in sessions of their own,
    # so the process group alone would leave node 1's worker training)
    node1 = [procs[1].pid] + [c.pid for c in psutil.Process(procs[1].pid).children(recursive=True)]
    for pid in node1:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    procs[1].wait()
    try:
        _, err = procs[0].communicate(timeout=TIMEOUT_S + 120)
    except subprocess.TimeoutExpired:
        os.killpg(procs[0].pid, signal.SIGKILL)  # leave no hung launcher behind for the next tests
        raise
    stopped_after = time.time() - t_kill
    assert procs[0].returncode == 2 and stopped_after <= TIMEOUT_S + 30, (procs[0].returncode, stopped_after)
    last = err.strip().splitlines()[-1]
    assert last.startswith("l2v: error: node 0: stage failed:") and "full log:" in last and "Traceback" not in last
    procs = two_nodes(out, 29871)
    errs = finish(*procs)
    assert [p.returncode for p in procs] == [0, 0], errs[0][-2000:] + errs[1][-2000:]
    assert re.search(r"02_train-mntp +resume", errs[0]), errs[0][-2000:]
    assert max_diff(ref_torchrun, out) <= 1e-5
    print(f"\nnode kill: node 0 exited {stopped_after:.1f}s after kill -9 of node 1")


# --------------------------------------------------------------------------- bad input


def run_cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "l2v_cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def one_line_error(p):
    assert p.returncode == 2, p.stderr[-2000:]
    lines = p.stderr.strip().splitlines()
    assert lines[-1].startswith("l2v: error: ") and "Traceback" not in p.stderr, p.stderr[-2000:]
    return lines[-1]


def test_a_node_rank_outside_the_nodes_is_refused_naming_the_node(tmp_path):
    out = tmp_path / "run"
    p = run_cli("convert", "tiny-llama", "--recipe", "smoke", "-o", str(out), "--gpus", "1", "--nodes", "2",
                "--node-rank", "2")
    last = one_line_error(p)
    assert "node rank 2 does not fit 2 node(s)" in last and "(node 2: --node-rank / --nodes)" in last
    p = run_cli("convert", "tiny-llama", "--recipe", "smoke", "-o", str(out), "--gpus", "1",
                env={"SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "3", "SLURM_JOB_NODELIST": "gpu[07-08]"})
    last = one_line_error(p)
    assert "node rank 3 does not fit 2 node(s)" in last and "SLURM_NODEID" in last
    assert not out.exists()


@pytest.mark.slow
def test_a_master_that_never_answers_is_one_line_from_the_waiting_node(tmp_path):
    out = tmp_path / "run"
    t0 = time.time()
    p = run_cli("convert", "tiny-llama", "--recipe", "smoke", "-o", str(out), "--gpus", "1", "--nodes", "2",
                "--node-rank", "1", "--master-addr", "127.0.0.1", "--master-port", "29881", "launcher.wait_s=5")
    last = one_line_error(p)
    assert last.startswith("l2v: error: node 1: node 0 never answered at 127.0.0.1:29882 within 5s")
    assert time.time() - t0 < 120 and not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("case", ["other-path", "stale-lock"])
def test_a_run_folder_node_1_cannot_see_fails_both_nodes_and_leaves_nothing(tmp_path, case):
    out0, out1 = tmp_path / "node0" / "run", tmp_path / "node1" / "run"
    if case == "stale-lock":  # node 1's folder holds the lock of another, older run
        out1.mkdir(parents=True)
        (out1 / ".l2v-nodes.json").write_text('{"token": "old", "host": "h", "pid": 1, "folder": "/x"}')
    common = ["--gpus", "1", "--nodes", "2", "--master-addr", "127.0.0.1", "--master-port", "29891",
              "launcher.wait_s=5"]
    p0 = start(out0, "--node-rank", "0", *common)
    p1 = start(out1, "--node-rank", "1", *common, node1=True)
    errs = finish(p0, p1, timeout=300)
    lines = [e.strip().splitlines()[-1] for e in errs]
    assert p0.returncode == p1.returncode == 2, errs
    want = "cannot see node 0's run folder" if case == "other-path" else "sees a stale lock"
    assert lines[1].startswith(f"l2v: error: node 1 {want}"), lines[1]
    assert lines[0].startswith(f"l2v: error: node 0: node 1 {want}"), lines[0]
    assert not out0.exists()  # node 0 took its lock back: nothing half-written
    assert not (out1 / "01_enable-bidir").exists()


def test_deepspeed_launch_argv_for_hostfile_ssh_and_for_no_ssh_per_node():
    from l2v_cli import launch as L

    worker = ["train-mntp", "in", "out", "r.yaml", "--resume"]
    ssh = L.build_argv(L.Launch(launcher="deepspeed", gpus=8, nodes=2, hostfile="hosts", master_port=29500), worker)
    assert ssh[1:] == ["-m", "deepspeed.launcher.runner", "--num_gpus", "8", "--master_port", "29500",
                       "--no_local_rank", "--hostfile", "hosts", "--num_nodes", "2", "--module",
                       "l2v_cli.stages.worker", *worker]
    spec = L.Launch(launcher="deepspeed", gpus=8, nodes=2, node_rank=1, master_addr="gpu07", master_port=29500)
    no_ssh = L.build_argv(spec, worker, hostfile="/tmp/h")
    assert no_ssh[1:] == ["-m", "deepspeed.launcher.runner", "--num_gpus", "8", "--master_port", "29500",
                          "--no_local_rank", "--hostfile", "/tmp/h", "--no_ssh", "--num_nodes", "2",
                          "--node_rank", "1", "--master_addr", "gpu07", "--module", "l2v_cli.stages.worker", *worker]
    assert L.no_ssh_hostfile(spec) == "node0 slots=8\nnode1 slots=8\n"
    tr = L.build_argv(L.Launch(launcher="torchrun", gpus=8, nodes=2, node_rank=1, master_addr="gpu07"), worker)
    assert tr[1:11] == ["-m", "torch.distributed.run", "--nproc_per_node", "8", "--nnodes", "2", "--node_rank", "1",
                        "--master_addr", "gpu07"]


def test_slurm_environment_gives_nodes_rank_and_master(monkeypatch):
    from l2v_cli import launch as L
    from l2v_cli.config import load_recipe

    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")
    monkeypatch.setenv("SLURM_NODEID", "1")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[07-08]")
    monkeypatch.setenv("PATH", "/nonexistent")  # no scontrol: l2v reads the node list itself
    spec = L.launch_spec(load_recipe("smoke"), gpus=8)
    assert (spec.nodes, spec.node_rank, spec.master_addr, spec.launcher) == (2, 1, "gpu07", "torchrun")
    spec = L.launch_spec(load_recipe("smoke"), gpus=8, node_rank=0, master_addr="10.0.0.1")  # options win
    assert (spec.nodes, spec.node_rank, spec.master_addr) == (2, 0, "10.0.0.1")
    assert L.first_host("a1,b[1-3]") == "a1" and L.first_host("n[3,5-9]x") == "n3"
