"""How the `l2v convert` processes of a multi-node run work together (one `l2v` per node, one shared
run folder).

Node 0 runs the single-process stages (enable-bidir, export, eval), writes every shared file
(DONE.json, the plan, the run lock) and tells the others, over a small key-value store it serves on
master_addr:master_port+1 (torch's TCPStore; the l2v processes never join the workers' process
group). Every node starts its own launcher for each training stage; the workers rendezvous on
master_port. Nodes > 0 write nothing in the run folder but their own logs (`<stage>.node<N>.log`) and
what their workers write for their own ranks (ledger/rank-N.json, the per-rank RNG / optimizer state
inside checkpoints).

Keys: node/<r> (claims: a rank given twice is refused), token (the run lock's token), seen/<r> (node r
sees the run folder, or why not), plan (the stage statuses node 0 decided), stage/<i> (done | failed:
<line>), failed (node 0's error line), bye/<r>.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from datetime import timedelta
from pathlib import Path

from l2v_cli.errors import L2VError

LOCK = ".l2v-nodes.json"  # in the run folder, written by node 0: which run owns the folder now
SEE_TIMEOUT_S = 30.0  # how long a node looks for node 0's lock file (shared file systems lag)
POLL_S = 0.5


class Nodes:
    """One node's side of the coordination; `spec` is a `launch.Launch` with nodes > 1."""

    def __init__(self, spec, out: Path):
        self.spec, self.out, self.rank = spec, Path(out), spec.node_rank
        self.label = spec.node_label
        self.addr = f"{spec.master_addr}:{spec.coord_port}"
        self.store = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ connecting
    def connect(self) -> None:
        import torch.distributed as dist

        wait = timedelta(seconds=self.spec.wait_s)
        try:
            if self.main:
                self.store = dist.TCPStore("0.0.0.0", self.spec.coord_port, None, True, wait, wait_for_workers=False)
            else:
                self.store = _connect_client(self.spec.master_addr, self.spec.coord_port, self.spec.wait_s, self.label)
        except L2VError:
            raise
        except Exception as e:  # noqa: BLE001 - the store reports bind/connect failures as RuntimeError
            if self.main:
                raise L2VError(f"{self.label}: cannot serve the nodes' coordination port {self.spec.coord_port} "
                               f"({_first_line(e)})", where=f"{self.label}: --master-port {self.spec.master_port} "
                               f"(+1 for l2v)", fix="another run may hold the port: choose another --master-port "
                               "(the same on every node)") from None
            raise
        claims = self.store.add(f"node/{self.rank}", 1)
        if claims > 1:
            raise L2VError(f"{self.label}: another l2v process already joined this run as node {self.rank}",
                           where=f"{self.label}: --node-rank / SLURM_NODEID",
                           fix=f"give each node a distinct rank 0..{self.spec.nodes - 1}")

    # ------------------------------------------------------------------ the run folder
    def share_folder(self) -> None:
        """Node 0 writes the lock (a fresh token); every other node must see exactly that file in its
        own view of the run folder, else the folder is not shared (another path, another file system)
        or the lock is stale (another run's)."""
        if self.main:
            token = uuid.uuid4().hex
            self.out.mkdir(parents=True, exist_ok=True)
            tmp = self.out / (LOCK + ".tmp")
            tmp.write_text(json.dumps({"token": token, "host": socket.gethostname(), "pid": os.getpid(),
                                       "nodes": self.spec.nodes, "time": time.time(),
                                       "folder": str(self.out)}))
            os.replace(tmp, self.out / LOCK)
            self.store.set("token", token)
            # node r may join up to wait_s late and then look for the lock for up to its see-timeout:
            # wait for its verdict beyond both, so the error names what node r found
            patience = self.spec.wait_s + min(SEE_TIMEOUT_S, self.spec.wait_s) + 10
            for r in range(1, self.spec.nodes):
                said = self._wait_key(f"seen/{r}", what=f"node {r} to join (it must start `l2v convert` with "
                                      f"--node-rank {r} within launcher.wait_s)", of=f"node {r}", timeout_s=patience)
                if said != "ok":
                    raise L2VError(f"node 0: {said}", where=str(self.out),
                                   fix="give every node the same -o on a file system they share")
            return
        token = self._wait_key("token", what="node 0 to open the run folder", of="node 0")
        lock, deadline, said = self.out / LOCK, time.time() + min(SEE_TIMEOUT_S, self.spec.wait_s), None
        while True:
            seen = _read_json(lock)
            if seen and seen.get("token") == token:
                said = "ok"
                break
            if time.time() > deadline:
                if seen is None:
                    said = (f"{self.label} cannot see node 0's run folder: {lock} does not exist there "
                            f"(node 0 writes it in its -o)")
                else:
                    said = (f"{self.label} sees a stale lock in {self.out}: {LOCK} belongs to another run "
                            f"(written by {seen.get('host')} pid {seen.get('pid')} for {seen.get('folder')})")
                break
            time.sleep(POLL_S)
        self.store.set(f"seen/{self.rank}", said)
        if said != "ok":
            raise L2VError(said, where=f"{self.label}: -o {self.out}",
                           fix="give every node the same -o on a file system they share (same path on each node)")

    # ------------------------------------------------------------------ stages
    def publish_plan(self, statuses: list[str]) -> None:
        self.store.set("plan", json.dumps(statuses))

    def plan(self) -> list[str]:
        return json.loads(self._wait_key("plan", what="node 0's stage plan", of="node 0"))

    def done(self, index: int) -> None:
        self.store.set(f"stage/{index}", "done")

    def fail(self, error: BaseException) -> None:
        """Node 0 failed: tell the others (they stop waiting and say why)."""
        if self.store is not None and self.main:
            line = error.line() if isinstance(error, L2VError) else f"{type(error).__name__}: {_first_line(error)}"
            try:
                self.store.set("failed", line)
            except Exception:  # noqa: BLE001 - the others will notice node 0 is gone
                pass

    def wait_stage(self, index: int, name: str) -> None:
        """Nodes > 0: wait until node 0 finished stage `index` (its single-process stages, or its
        bookkeeping after a training stage); at most launcher.wait_s (raise it for an export or eval
        of a large model), and not at all once node 0 failed or died (`_wait_key`)."""
        self._wait_key(f"stage/{index}", what=f"node 0 to finish {name}", of="node 0")

    def finish(self) -> None:
        """Node 0 serves the store until every node has read what it needs."""
        if self.store is None:
            return
        try:
            if self.main:
                self.store.set("finished", "ok")
                for r in range(1, self.spec.nodes):
                    self._wait_key(f"bye/{r}", what=f"node {r} to finish", of=f"node {r}", timeout_s=60)
            else:
                self._wait_key("finished", what="node 0 to finish", of="node 0")
                self.store.set(f"bye/{self.rank}", "ok")
        except L2VError:
            if not self.main:
                raise

    def _wait_key(self, key: str, *, what: str, of: str, timeout_s: float | None = None) -> str:
        """The value of `key` once set; fails at once when node 0 reported a failure or went away."""
        deadline = time.time() + (timeout_s or self.spec.wait_s)
        while True:
            try:
                if self.store.check([key]):
                    return self.store.get(key).decode()
                if not self.main and self.store.check(["failed"]):
                    raise L2VError(f"{self.label}: node 0 failed while this node waited for {what}: "
                                   f"{self.store.get('failed').decode()}", where=f"{self.label}, waiting for {what}",
                                   fix="fix what node 0 reports (see its log), then start every node again: "
                                       "the run resumes")
            except L2VError:
                raise
            except Exception as e:  # noqa: BLE001 - a dead server: connection reset / closed
                raise L2VError(f"{self.label}: lost {of} (at {self.addr}) while waiting for {what}: {_first_line(e)}",
                               where=f"{self.label}, waiting for {what}",
                               fix=f"{of} failed or was killed: see its log, then start every node again (the run "
                                   "resumes from the last checkpoint)") from None
            if time.time() > deadline:
                raise L2VError(f"{self.label}: gave up waiting for {what} after {timeout_s or self.spec.wait_s:.0f}s",
                               where=f"{self.label}, launcher.wait_s",
                               fix=f"check that {of} is running (its log), or raise launcher.wait_s")
            time.sleep(POLL_S)

    def close(self) -> None:
        self.store = None


def _connect_client(host: str, port: int, wait_s: float, label: str):
    """Connect to node 0's store; a master that never answers is one clear error, not a hang."""
    import torch.distributed as dist

    deadline, last = time.time() + wait_s, None
    while time.time() < deadline:
        try:  # a short try, repeated: node 0 may start later than this node
            return dist.TCPStore(host, port, None, False, timedelta(seconds=min(10.0, wait_s)))
        except Exception as e:  # noqa: BLE001
            last = e
            time.sleep(POLL_S)
    raise L2VError(f"{label}: node 0 never answered at {host}:{port} within {wait_s:.0f}s ({_first_line(last)})",
                   where=f"{label}: --master-addr / --master-port (l2v uses master_port + 1 between nodes), "
                         "launcher.wait_s",
                   fix="start node 0 too (srun starts every node), check the address and port, and that the "
                       "port is open between the nodes")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _first_line(e) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
