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
import time
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
    timeout_s: int = 1800  # collective timeout of the workers
    wait_s: int = 3600  # how long nodes > 0 wait for node 0
    origin: str = "options"  # where nodes/node_rank came from: "options" | "recipe" | "SLURM"

    def distributed(self) -> bool:
        return self.launcher != "none" or self.gpus > 1 or self.nodes > 1

    def multi_node(self) -> bool:
        return self.nodes > 1

    @property
    def coord_port(self) -> int:
        """The port the l2v processes of a multi-node run coordinate on (the workers use master_port)."""
        return self.master_port + 1

    @property
    def node_label(self) -> str:
        return f"node {self.node_rank}"


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list ("gpu[03-05,9],cpu1" -> "gpu03"), without scontrol."""
    head = ""
    depth = 0
    for ch in nodelist:
        if ch == "," and depth == 0:
            break
        depth += ch == "["
        depth -= ch == "]"
        head += ch
    if "[" in head:
        prefix, _, rest = head.partition("[")
        return prefix + rest.split(",")[0].split("-")[0].rstrip("]")
    return head


def from_slurm(launch: Launch, given: set[str] = frozenset()) -> Launch:
    """Take node count, rank and master from SLURM's environment for what the user did not give
    on the command line (`given`: the option names given)."""
    env = os.environ
    nodes = env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES")
    if not nodes or "nodes" in given:
        return launch
    try:
        launch.nodes = int(nodes)
        if "node_rank" not in given:
            launch.node_rank = int(env.get("SLURM_NODEID", "0"))
    except ValueError:
        raise L2VError(f"SLURM_JOB_NUM_NODES={nodes!r} / SLURM_NODEID={env.get('SLURM_NODEID')!r} are not numbers",
                       where="SLURM environment", fix="run under srun/sbatch, or give --nodes and --node-rank") from None
    launch.origin = "SLURM"
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", "")
    if nodelist and "master_addr" not in given:
        host = None
        if shutil.which("scontrol"):
            out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.split():
                host = out.stdout.split()[0]
        launch.master_addr = host or first_host(nodelist)
    return launch


def _given(value, default):
    """A command-line option if given (0 included: --gpus 0 is an error, not "unset"), else the recipe's."""
    return default if value is None else value


def launch_spec(recipe, *, gpus=None, nodes=None, hostfile=None, launcher=None, deepspeed=None,
                master_port=None, node_rank=None, master_addr=None) -> Launch:
    """The launch settings: command-line options over SLURM's environment over the recipe's
    `launcher` section."""
    lc = recipe.launcher
    spec = Launch(launcher=launcher or lc.launcher, gpus=_given(gpus, lc.gpus), nodes=_given(nodes, lc.nodes),
                  node_rank=_given(node_rank, lc.node_rank), master_addr=master_addr or lc.master_addr,
                  hostfile=hostfile or lc.hostfile, master_port=_given(master_port, lc.master_port),
                  deepspeed=deepspeed_config(deepspeed or lc.deepspeed), timeout_s=lc.timeout_s, wait_s=lc.wait_s,
                  origin="options" if nodes is not None or node_rank is not None else "recipe")
    if spec.launcher not in LAUNCHERS:
        raise L2VError(f"unknown launcher {spec.launcher!r}", where="--launcher" if launcher else "launcher.launcher",
                       fix=did_you_mean(spec.launcher, LAUNCHERS))
    if spec.deepspeed and spec.launcher == "none":
        spec.launcher = "deepspeed"
    given = {k for k, v in (("nodes", nodes), ("node_rank", node_rank), ("master_addr", master_addr)) if v is not None}
    spec = from_slurm(spec, given)
    if spec.nodes > 1 and spec.launcher == "none":
        spec.launcher = "torchrun"
    return spec


def check_launch(launch: Launch) -> None:
    import torch

    if launch.gpus < 1 or launch.nodes < 1:
        raise L2VError(f"--gpus and --nodes must be >= 1 (got {launch.gpus}, {launch.nodes})",
                       where="launcher", fix="e.g. --gpus 8")
    if not 0 < launch.master_port <= 65535:
        raise L2VError(f"--master-port must be 1..65535 (got {launch.master_port})", where="--master-port",
                       fix="e.g. --master-port 29500")
    if not 0 <= launch.node_rank < launch.nodes:
        src = {"SLURM": "SLURM_NODEID / SLURM_JOB_NUM_NODES", "recipe": "launcher.node_rank / launcher.nodes"}.get(
            launch.origin, "--node-rank / --nodes")
        raise L2VError(f"node rank {launch.node_rank} does not fit {launch.nodes} node(s) (ranks are 0..{launch.nodes - 1})",
                       where=f"{launch.node_label}: {src}",
                       fix=f"give each node a distinct --node-rank from 0 to {launch.nodes - 1}, and the same --nodes")
    if launch.nodes > 1 and launch.master_port >= 65535:
        raise L2VError(f"--master-port {launch.master_port} leaves no port for the nodes' coordination (it uses "
                       "master_port + 1)", where="--master-port", fix="e.g. --master-port 29500")
    if torch.cuda.is_available() and launch.gpus > torch.cuda.device_count():
        raise L2VError(f"--gpus {launch.gpus} but this machine has {torch.cuda.device_count()} CUDA devices",
                       where="--gpus", fix=f"use --gpus {torch.cuda.device_count()} or fewer")
    if launch.hostfile and not Path(launch.hostfile).is_file():
        raise L2VError(f"hostfile {launch.hostfile} not found", where="--hostfile",
                       fix="give a DeepSpeed-style hostfile ('host slots=N' per line)")
    if launch.launcher == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise L2VError("the deepspeed launcher is not installed", where="--launcher deepspeed",
                       fix="pip install 'l2v[deepspeed]' (or use --launcher torchrun)")


def no_ssh_hostfile(launch: Launch) -> str:
    """The hostfile text DeepSpeed's --no_ssh mode needs: one line per node (the names are labels;
    each node's launcher starts only its own workers)."""
    return "".join(f"node{i} slots={launch.gpus}\n" for i in range(launch.nodes))


def build_argv(launch: Launch, worker_args: list[str], hostfile: str | None = None) -> list[str]:
    """The exact command that starts the workers; `hostfile`: the written `no_ssh_hostfile`."""
    if not launch.distributed():
        return [sys.executable, "-m", WORKER, *worker_args]
    if launch.launcher == "deepspeed":
        # The launcher module of this interpreter: works without the venv's bin/ on PATH.
        argv = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(launch.gpus),
                "--master_port", str(launch.master_port), "--no_local_rank"]
        if launch.hostfile:  # DeepSpeed starts every node's workers from here, over ssh/pdsh
            argv += ["--hostfile", launch.hostfile, "--num_nodes", str(launch.nodes)]
        elif launch.nodes > 1:  # no ssh: one launcher per node, as torchrun does; DeepSpeed still
            # wants a hostfile to count the nodes and their slots (`no_ssh_hostfile`, node-local)
            argv += ["--hostfile", hostfile or "<node-local hostfile>", "--no_ssh", "--num_nodes",
                     str(launch.nodes), "--node_rank", str(launch.node_rank), "--master_addr", launch.master_addr]
        return argv + ["--module", WORKER, *worker_args]
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(launch.gpus),
            "--nnodes", str(launch.nodes), "--node_rank", str(launch.node_rank),
            "--master_addr", launch.master_addr, "--master_port", str(launch.master_port)]
    return argv + ["-m", WORKER, *worker_args]


RANK_DIR_ENV = "L2V_RANK_DIR"  # node-local folder where each worker records its start and its end


def child_env(rank_dir: str | None = None) -> dict:
    env = dict(os.environ)
    # Each CPU worker gets its share of the cores instead of all of them (oversubscription is slow).
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if rank_dir:
        env[RANK_DIR_ENV] = rank_dir
    return env


def record_rank(event: str, **info) -> None:
    """A worker's note of its start ("started") or end ("ended", with how) in the launching l2v's
    node-local folder, so that a rank killed without a word (kill -9, the OOM killer) is named."""
    folder = os.environ.get(RANK_DIR_ENV)
    if not folder:
        return
    import json

    rank = os.environ.get("RANK", "0")
    try:
        with open(Path(folder) / f"rank-{rank}.{event}", "w") as f:
            json.dump({"rank": int(rank), "pid": os.getpid(), "local_rank": os.environ.get("LOCAL_RANK"), **info}, f)
    except OSError:
        pass


def rank_report(rank_dir: Path) -> tuple[list[str], list[str]]:
    """(ranks that died without a word, how the others ended) from the workers' records."""
    import json

    died, others = [], []
    for started in sorted(rank_dir.glob("rank-*.started"), key=lambda p: int(p.name.split("-")[1].split(".")[0])):
        info = json.loads(started.read_text())
        ended = started.with_suffix(".ended")
        who = f"rank {info['rank']} (pid {info['pid']})"
        if not ended.exists():
            died.append(f"{who} died without an error (killed: kill -9, the OOM killer or a lost node)")
        else:
            how = json.loads(ended.read_text()).get("how", "")
            if how and how != "ok":
                others.append(f"{who} {how[:200]}")
    return died, others


def run(argv: list[str], log_path: Path, node: str = "") -> None:
    """Run the launcher, tee its output to `log_path`; on failure raise naming the rank that failed
    (a worker's own error line, or the rank that died without one) and the log.

    `node` ("node 1") prefixes the error in multi-node runs."""
    import tempfile

    print(f"$ {shlex.join(argv)}", file=sys.stderr, flush=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: deque[str] = deque(maxlen=40)
    errors: list[str] = []  # the workers' own one-line errors (the launcher's report follows them)
    with tempfile.TemporaryDirectory(prefix="l2v-ranks-") as rank_dir, open(log_path, "a") as log:
        t0 = time.time()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=child_env(rank_dir), bufsize=1, errors="replace")
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
        if code == 0:
            return
        died, others = rank_report(Path(rank_dir))
    prefix = f"{node}: " if node else ""
    took = f" ({time.time() - t0:.0f}s into the stage)"
    if died and not errors:  # the cause: a rank that vanished; the others only stopped because of it
        rest = f"; then {'; '.join(others)}" if others else ""
        raise L2VError(f"{prefix}stage failed: {'; '.join(died)}{rest}{took}", where=f"full log: {log_path}",
                       fix="find the cause (memory? a node lost?), then rerun the same command: it resumes "
                           "from the last checkpoint")
    first = errors[0].split("l2v: error:", 1)[-1].strip() if errors else (
        next((l.strip() for l in reversed(tail) if "Error" in l), f"exit code {code}"))
    # The worker's line already says what/where/fix; add only where the full log is.
    raise L2VError(f"{prefix}stage failed: {first}" + ("" if errors else
                   " — fix: see the log, then rerun the same command (it resumes)"),
                   where=f"full log: {log_path}")
