"""Run a training stage in worker processes under torchrun or the DeepSpeed launcher.

Commands are argv lists (never shell strings), printed before they run. The calling CLI process
never joins the process group: it only starts the launcher and watches it. Without CUDA, N
"GPUs" means N CPU processes over gloo, so the real distributed path runs on any machine.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from l2v_cli.errors import L2VError, did_you_mean

WORKER = "l2v_cli.stages.worker"
LAUNCHERS = ("none", "torchrun", "deepspeed")


def deepspeed_config(spec: str | None) -> str | None:
    """'zero2'/'zero3' -> the shipped config file; a path -> itself (checked)."""
    if spec in (None, "", "none"):
        return None
    if spec in ("zero2", "zero3"):
        return str(files("l2v_cli.configs") / "deepspeed" / f"{spec}.json")
    if not Path(spec).is_file():
        raise L2VError(f"DeepSpeed config {spec} not found", where="--deepspeed",
                       fix="use zero2, zero3 or the path of a DeepSpeed JSON config")
    return str(Path(spec).resolve())


@dataclass
class Launch:
    launcher: str = "none"  # none | torchrun | deepspeed
    gpus: int = 1  # processes per node
    nodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    hostfile: str | None = None
    deepspeed: str | None = None  # resolved config path

    def distributed(self) -> bool:
        return self.launcher != "none" or self.gpus > 1 or self.nodes > 1


def from_slurm(launch: Launch) -> Launch:
    """Take node count, rank and master from SLURM's environment when the user gave none."""
    env = os.environ
    if "SLURM_JOB_NUM_NODES" in env and launch.nodes == 1:
        launch.nodes = int(env["SLURM_JOB_NUM_NODES"])
        launch.node_rank = int(env.get("SLURM_NODEID", "0"))
        nodelist = env.get("SLURM_JOB_NODELIST", "")
        if nodelist and shutil.which("scontrol"):
            out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.split():
                launch.master_addr = out.stdout.split()[0]
    return launch


def _given(value, default):
    """A command-line option if given (0 included: --gpus 0 is an error, not "unset"), else the recipe's."""
    return default if value is None else value


def launch_spec(recipe, *, gpus=None, nodes=None, hostfile=None, launcher=None, deepspeed=None,
                master_port=None) -> Launch:
    """The launch settings: command-line options over the recipe's `launcher` section, then SLURM."""
    lc = recipe.launcher
    spec = Launch(launcher=launcher or lc.launcher, gpus=_given(gpus, lc.gpus), nodes=_given(nodes, lc.nodes),
                  hostfile=hostfile or lc.hostfile, master_port=_given(master_port, lc.master_port),
                  deepspeed=deepspeed_config(deepspeed or lc.deepspeed))
    if spec.launcher not in LAUNCHERS:
        raise L2VError(f"unknown launcher {spec.launcher!r}", where="--launcher" if launcher else "launcher.launcher",
                       fix=did_you_mean(spec.launcher, LAUNCHERS))
    if spec.deepspeed and spec.launcher == "none":
        spec.launcher = "deepspeed"
    return from_slurm(spec)


def check_launch(launch: Launch) -> None:
    import torch

    if launch.gpus < 1 or launch.nodes < 1:
        raise L2VError(f"--gpus and --nodes must be >= 1 (got {launch.gpus}, {launch.nodes})",
                       where="launcher", fix="e.g. --gpus 8")
    if not 0 < launch.master_port <= 65535:
        raise L2VError(f"--master-port must be 1..65535 (got {launch.master_port})", where="--master-port",
                       fix="e.g. --master-port 29500")
    if torch.cuda.is_available() and launch.gpus > torch.cuda.device_count():
        raise L2VError(f"--gpus {launch.gpus} but this machine has {torch.cuda.device_count()} CUDA devices",
                       where="--gpus", fix=f"use --gpus {torch.cuda.device_count()} or fewer")
    if launch.hostfile and not Path(launch.hostfile).is_file():
        raise L2VError(f"hostfile {launch.hostfile} not found", where="--hostfile",
                       fix="give a DeepSpeed-style hostfile ('host slots=N' per line)")
    if launch.launcher == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise L2VError("the deepspeed launcher is not installed", where="--launcher deepspeed",
                       fix="pip install 'l2v[deepspeed]' (or use --launcher torchrun)")


def build_argv(launch: Launch, worker_args: list[str]) -> list[str]:
    """The exact command that starts the workers."""
    if not launch.distributed():
        return [sys.executable, "-m", WORKER, *worker_args]
    if launch.launcher == "deepspeed":
        # The launcher module of this interpreter: works without the venv's bin/ on PATH.
        argv = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(launch.gpus),
                "--master_port", str(launch.master_port), "--no_local_rank"]
        if launch.hostfile:
            argv += ["--hostfile", launch.hostfile, "--num_nodes", str(launch.nodes)]
        elif launch.nodes > 1:  # no ssh: one launcher per node, as torchrun does
            argv += ["--no_ssh", "--num_nodes", str(launch.nodes), "--node_rank", str(launch.node_rank),
                     "--master_addr", launch.master_addr]
        return argv + ["--module", WORKER, *worker_args]
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(launch.gpus),
            "--nnodes", str(launch.nodes), "--node_rank", str(launch.node_rank),
            "--master_addr", launch.master_addr, "--master_port", str(launch.master_port)]
    return argv + ["-m", WORKER, *worker_args]


def child_env() -> dict:
    env = dict(os.environ)
    # Each CPU worker gets its share of the cores instead of all of them (oversubscription is slow).
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def run(argv: list[str], log_path: Path) -> None:
    """Run the launcher, tee its output to `log_path`; on failure raise with the child's last error."""
    print(f"$ {shlex.join(argv)}", file=sys.stderr, flush=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: deque[str] = deque(maxlen=40)
    errors: list[str] = []  # the workers' own one-line errors (the launcher's report follows them)
    with open(log_path, "a") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=child_env(), bufsize=1, errors="replace")
        try:
            for line in proc.stdout:
                sys.stderr.write(line)
                log.write(line)
                tail.append(line.rstrip("\n"))
                if "l2v: error:" in line:
                    errors.append(line.rstrip("\n"))
            code = proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait(timeout=60)
            raise
    if code != 0:
        first = errors[0].split("l2v: error:", 1)[-1].strip() if errors else (
            next((l.strip() for l in reversed(tail) if "Error" in l), f"exit code {code}"))
        # The worker's line already says what/where/fix; add only where the full log is.
        raise L2VError(f"stage failed: {first}" + ("" if errors else
                       " — fix: see the log, then rerun the same command (it resumes)"),
                       where=f"full log: {log_path}")
