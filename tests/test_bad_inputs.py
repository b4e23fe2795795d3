"""A catalogue of bad inputs, one per row, across every command.

Each case runs `l2v ARGV` in a fresh working directory (prepared by the case's `setup`) and
asserts the error contract: a non-zero exit (2, an `L2VError`), stderr's last non-empty line
starts with `l2v: error:` and names what went wrong plus where/how to fix it, no traceback, and
nothing left behind — the working directory (which holds OUT) is byte-for-byte as it was before.

Most cases run in-process through `l2v_cli.cli.main.run` (fast); the ones marked `sub=True` go
through a real `python -m l2v_cli` subprocess. Nearly all fail before any model is loaded.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest

from tests.cli_helpers import run_in_process

# --------------------------------------------------------------------------- set-up helpers

Setup = Callable[[Path, "Ctx"], None]


def files(spec: dict[str, str | bytes | None]) -> Setup:
    """Create files (str/bytes content) and folders (name ending in '/', or content None)."""

    def setup(d: Path, ctx: "Ctx") -> None:
        for name, content in spec.items():
            p = d / name
            if name.endswith("/") or content is None:
                p.mkdir(parents=True, exist_ok=True)
                continue
            p.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                p.write_bytes(content)
            else:
                p.write_text(content, encoding="utf-8")

    return setup


def both(*setups: Setup) -> Setup:
    def setup(d: Path, ctx: "Ctx") -> None:
        for s in setups:
            s(d, ctx)

    return setup


def trained_run_without_stage_json(d: Path, ctx: "Ctx") -> None:
    """A train-mntp run (2 steps, a checkpoint at step 2) whose stage.json is gone: it resumes."""
    shutil.copytree(ctx.tiny_mntp_run(), d / "run")
    (d / "run" / "stage.json").unlink()


def ranges_file(name: str, width: int) -> Setup:
    """An int8 calibration ranges file (2, width) — `l2v encode --precision int8` writes one."""

    def setup(d: Path, ctx: "Ctx") -> None:
        import numpy as np

        np.save(d / name, np.stack([-np.ones(width), np.ones(width)]).astype(np.float32))

    return setup


TINY_MNTP = ["mntp.train.max_steps=2", "mntp.train.save_steps=2", "mntp.data.max_samples=20"]
GGUF_HEADER = b"GGUF" + (3).to_bytes(4, "little") + (5).to_bytes(8, "little") + (9).to_bytes(8, "little")


# --------------------------------------------------------------------------- the catalogue


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    expect: tuple[str, ...]  # substrings of the one error line: what + where/fix
    setup: Optional[Setup] = None
    env: dict = field(default_factory=dict)
    sub: bool = False  # through a real `python -m l2v_cli` subprocess
    xfail: Optional[str] = None


def C(id, argv, *expect, setup=None, env=None, sub=False, xfail=None) -> Case:
    return Case(id, tuple(argv.split()) if isinstance(argv, str) else tuple(argv), expect, setup, env or {}, sub, xfail)


CASES: list[Case] = [
    # ---- recipes: YAML and keys ------------------------------------------------------------
    C("yaml-malformed", "convert tiny-llama -r bad.yaml -o OUT",
      "malformed YAML", "bad.yaml:3", "fix the YAML syntax",
      setup=files({"bad.yaml": "name: bad\nstages: [enable-bidir\nmntp:\n  x: 1\n"}), sub=True),
    C("yaml-not-a-mapping", "recipes show list.yaml", "must be a YAML mapping", "list.yaml:1",
      setup=files({"list.yaml": "- a\n- b\n"})),
    C("yaml-duplicate-key", "recipes show dup.yaml", "duplicate key 'name'", "dup.yaml:2", "line 1",
      setup=files({"dup.yaml": "name: a\nname: b\nstages: [export]\n"})),
    C("yaml-python-tag", "convert tiny-llama -r evil.yaml -o OUT", "unsupported YAML tag", "safe_load", "evil.yaml:1",
      setup=files({"evil.yaml": 'stages: !!python/object/apply:os.system ["touch MARKER"]\n'})),
    C("recipe-unknown-key-in-file", "convert tiny-llama -r unk.yaml -o OUT",
      "unknown key 'mntp.train.max_stepz'", "unk.yaml:5", "did you mean 'mntp.train.max_steps'",
      setup=files({"unk.yaml": "name: x\nstages: [enable-bidir, export]\nmntp:\n  train:\n    max_stepz: 3\n"})),
    C("override-unknown-key", "convert tiny-llama -r smoke -o OUT mntp.trian.max_steps=2",
      "unknown key 'mntp.trian'", "override 'mntp.trian.max_steps=2'", "did you mean 'mntp.train'"),
    C("override-unknown-top-key", "recipes show smoke trust_remote_code=true",
      "unknown key 'trust_remote_code'", "valid keys"),
    C("override-wrong-type", "train-mntp tiny-llama -r smoke -o OUT mntp.train.max_steps=abc",
      "wrong type for 'mntp.train.max_steps'", "expected int", "got 'abc'", "whole number", sub=True),
    C("override-malformed", "convert tiny-llama -r smoke -o OUT foo", "malformed override 'foo'", "key.sub=value"),
    C("override-negative-lr", "convert tiny-llama -r smoke -o OUT mntp.train.learning_rate=-1e-4",
      "'mntp.train.learning_rate' must be > 0", "got -0.0001", "override"),
    C("override-mask-prob-above-1", "train-mntp tiny-llama -r smoke -o OUT mntp.mask_probability=1.5",
      "'mntp.mask_probability' must be > 0 and < 1", "got 1.5"),
    C("override-zero-steps", "train-simcse tiny-llama -r smoke -o OUT simcse.train.max_steps=0",
      "'simcse.train.max_steps' must be > 0", "got 0"),
    C("override-unknown-pooling", "convert tiny-llama -r smoke -o OUT export.pooling=maxx",
      "wrong type for 'export.pooling'", "one of mean", "did you mean 'mean'"),
    C("override-port-out-of-range", "convert tiny-llama -r smoke -o OUT launcher.master_port=70000",
      "'launcher.master_port' must be > 0 and <= 65535"),
    C("stage-listed-twice", "convert tiny-llama -r smoke -o OUT stages=[enable-bidir,enable-bidir]",
      "stage 'enable-bidir' is listed twice", "key stages", "list each stage once"),
    C("stages-out-of-order", "convert tiny-llama -r smoke -o OUT stages=[enable-bidir,export,train-mntp]",
      "stages are out of order", "use the order [enable-bidir, train-mntp, export]"),
    C("training-without-enable-bidir", "convert tiny-llama -r smoke -o OUT stages=[train-mntp,export]",
      "'enable-bidir' is missing", "put 'enable-bidir' first"),
    C("recipe-unknown-name", "convert tiny-llama -r smok -o OUT",
      "unknown recipe 'smok'", "shipped recipes: cpu-demo, cpu-demo-sup, smoke", "did you mean 'smoke'", sub=True),
    C("recipe-file-missing", "convert tiny-llama -r nosuch.yaml -o OUT", "recipe file not found: nosuch.yaml",
      "check the path"),
    # ---- MODEL specs ---------------------------------------------------------------------------
    C("model-unknown-alias", "enable-bidir tiny-lama -o OUT",
      "unknown model alias 'tiny-lama'", "did you mean 'tiny-llama'", "l2v models", sub=True),
    C("model-empty", ["enable-bidir", "", "-o", "OUT"], "MODEL is empty", "alias"),
    C("model-missing-path", "enable-bidir ./no-such-model -o OUT", "no such file or folder: ./no-such-model",
      "check the path"),
    C("model-folder-without-config", "enable-bidir ./empty -o OUT", "has no config.json", "Hugging Face model folder",
      setup=files({"empty/": None})),
    C("model-lora-adapter-folder", "encode ./adapter -i t.txt -o OUT.npy", "LoRA adapter folder", "base model",
      setup=files({"adapter/adapter_config.json": "{}", "t.txt": "a\n"})),
    C("model-config-not-json", "enable-bidir ./broken -o OUT", "cannot read", "config.json", "damaged",
      setup=files({"broken/config.json": "{not json"})),
    C("model-unknown-architecture", "enable-bidir ./weird -o OUT",
      "model_type 'frobnicator' is not supported by transformers", "upgrade transformers",
      setup=files({"weird/config.json": json.dumps({"model_type": "frobnicator"})})),
    C("model-encoder-only-architecture", "enable-bidir ./bert -o OUT", "'bert' is an encoder-only", "decoder",
      setup=files({"bert/config.json": json.dumps({"model_type": "bert", "architectures": ["BertModel"]})})),
    C("model-pickle-only", "enable-bidir ./pickled -o OUT", "only pickle weights", "--allow-pickle",
      setup=files({"pickled/config.json": json.dumps({"model_type": "llama"}), "pickled/pytorch_model.bin": b"\x80"})),
    C("gguf-truncated", "enable-bidir ./broken.gguf -o OUT", "GGUF file", "broken.gguf", "corrupt or truncated",
      "re-download", setup=files({"broken.gguf": GGUF_HEADER + bytes(range(256)) * 2}), sub=True),
    C("gguf-no-magic", "enable-bidir ./fake.gguf -o OUT", "is not a GGUF file", "magic",
      setup=files({"fake.gguf": b"hello, not a model"})),
    C("hub-id-offline", "enable-bidir someorg/some-model -o OUT",
      "cannot reach the Hugging Face Hub", "HF_HUB_OFFLINE is set", "local model folder",
      env={"HF_HUB_OFFLINE": "1"}, sub=True),
    # ---- outputs -------------------------------------------------------------------------------
    C("out-exists", "enable-bidir tiny-llama -o OUT", "OUT", "already exists", "--overwrite",
      setup=files({"OUT/keep.txt": "precious"})),
    C("out-parent-is-a-file", "enable-bidir tiny-llama -o afile/OUT", "cannot create the folder", "afile",
      "folder you can write to", setup=files({"afile": "x"})),
    C("convert-out-is-a-file", "convert tiny-llama -r smoke -o afile", "cannot use", "afile exists and is a file",
      "choose another -o", setup=files({"afile": "x"})),
    C("train-out-parent-is-a-file", "train-mntp tiny-llama -r smoke -o afile/OUT", "afile (a parent of",
      "is a file", setup=files({"afile": "x"})),
    C("encode-out-not-npy", "encode tiny-llama -i t.txt -o OUT.txt", "must end in .npy", "--output",
      setup=files({"t.txt": "a\n"})),
    C("encode-out-parent-is-a-file", "encode tiny-llama -i t.txt -o afile/OUT.npy", "is a file, not a folder",
      setup=files({"t.txt": "a\n", "afile": "x"})),
    # ---- encode inputs ---------------------------------------------------------------------------
    C("encode-empty-input", "encode tiny-llama -i empty.txt -o OUT.npy", "is empty (no texts)", "--input",
      setup=files({"empty.txt": "\n\n"}), sub=True),
    C("encode-non-utf8-line", "encode tiny-llama -i latin.txt -o OUT.npy", "line 2 is not valid UTF-8",
      "latin.txt:2", "iconv", setup=files({"latin.txt": b"fine\ncaf\xe9\n"}), sub=True),
    C("encode-jsonl-without-key", "encode tiny-llama -i rows.jsonl -o OUT.npy", "line 2 has no 'text' key",
      "rows.jsonl:2", setup=files({"rows.jsonl": '{"text": "a"}\n{"body": "b"}\n'})),
    C("encode-jsonl-bad-json", "encode tiny-llama -i rows.jsonl -o OUT.npy", "line 1 is not valid JSON",
      "rows.jsonl:1", setup=files({"rows.jsonl": "{text: a}\n"})),
    C("encode-input-missing", "encode tiny-llama -i nope.txt -o OUT.npy", "does not exist", "--input"),
    C("encode-input-is-a-folder", "encode tiny-llama -i data.txt -o OUT.npy", "is a directory", "--input",
      setup=files({"data.txt/": None})),
    C("encode-unknown-pooling", "encode tiny-llama -i t.txt -o OUT.npy --pooling maxx",
      "unknown pooling method 'maxx'", "--pooling", "did you mean 'mean'", setup=files({"t.txt": "a\n"})),
    C("encode-unknown-dtype", "encode tiny-llama -i t.txt -o OUT.npy --dtype fp8", "unknown dtype 'fp8'", "--dtype",
      setup=files({"t.txt": "a\n"})),
    C("encode-unknown-precision", "encode tiny-llama -i t.txt -o OUT.npy --precision int4",
      "unknown precision 'int4'", "--precision", "did you mean 'int8'", setup=files({"t.txt": "a\n"})),
    C("encode-dim-above-hidden", "encode tiny-llama -i t.txt -o OUT.npy --dim 100",
      "dim 100 is larger than the model's hidden size 64", "--dim", setup=files({"t.txt": "a\nb\n"})),
    C("encode-calibration-wrong-width", "encode tiny-llama -i t.txt -o OUT.npy --precision int8 --calibration r.npy",
      "calibration ranges are 32 wide but the embeddings are 64 wide", "--calibration r.npy",
      setup=both(files({"t.txt": "a\nb\n"}), ranges_file("r.npy", 32)), sub=True),
    C("encode-max-length-zero", "encode tiny-llama -i t.txt -o OUT.npy --max-length 0",
      "Invalid value for '--max-length'", "l2v encode --help", setup=files({"t.txt": "a\n"}), sub=True),
    C("unknown-command", "encdoe tiny-llama", "No such command 'encdoe'", "l2v --help"),
    # ---- eval ------------------------------------------------------------------------------------
    C("eval-unknown-task", "eval tiny-llama --tasks stsbb -o OUT.json", "unknown task 'stsbb'", "--tasks",
      "did you mean 'stsb'", sub=True),
    C("eval-unknown-task-lists-valid", "eval tiny-llama --tasks zzz -o OUT.json", "unknown task 'zzz'",
      "valid: banking77", "sts:PATH"),
    C("eval-task-file-missing", "eval tiny-llama --tasks sts:missing.jsonl -o OUT.json", "missing.jsonl does not exist",
      "--tasks"),
    C("eval-unknown-pooling", "eval tiny-llama --tasks stsb --pooling maxx -o OUT.json", "unknown pooling method"),
    C("eval-dims-not-increasing", "eval tiny-llama --tasks stsb --dims 128,64 -o OUT.json",
      "dims must be strictly increasing, got [128, 64]", "--dims", "e.g. [64, 128]"),
    C("eval-unknown-precision", "eval tiny-llama --tasks stsb --precision float8 -o OUT.json",
      "unknown precision 'float8'", "--precision"),
    C("recipe-matryoshka-dims-not-increasing", "train-simcse tiny-llama -r smoke -o OUT simcse.matryoshka.dims=[128,64]",
      "dims must be strictly increasing", "key simcse.matryoshka.dims"),
    C("eval-compare-mode-without-compare", "eval tiny-llama --tasks stsb --compare-causal -o OUT.json",
      "need --compare OTHER", "add --compare MODEL"),
    C("eval-output-is-a-folder", "eval tiny-llama --tasks stsb -o results", "is a folder", "--output",
      setup=files({"results/": None})),
    # ---- training data and launch ----------------------------------------------------------------
    C("train-data-missing", "train-mntp tiny-llama -r smoke -o OUT mntp.data.path=./nope.txt",
      "data not found: ./nope.txt", "key mntp.data.path"),
    C("convert-data-missing", "convert tiny-llama -r smoke -o OUT supervised.data.path=./nodir",
      "data not found: ./nodir", "key supervised.data.path"),
    C("train-jsonl-without-key", "train-supervised tiny-llama -r smoke -o OUT supervised.data.path=./rows.jsonl",
      "row has no 'query'", "rows.jsonl:1", "positive and negative",
      setup=files({"rows.jsonl": '{"text": "no triplet here"}\n'})),
    C("hostfile-missing", "train-mntp tiny-llama -r smoke -o OUT --hostfile hosts.txt",
      "hostfile hosts.txt not found", "--hostfile", sub=True),
    C("convert-hostfile-missing", "convert tiny-llama -r smoke -o OUT --hostfile hosts.txt",
      "hostfile hosts.txt not found"),
    C("gpus-zero", "train-mntp tiny-llama -r smoke -o OUT --gpus 0", "--gpus and --nodes must be >= 1", "got 0",
      sub=True),
    C("convert-gpus-zero", "convert tiny-llama -r smoke -o OUT --gpus 0", "--gpus and --nodes must be >= 1"),
    C("master-port-out-of-range", "train-simcse tiny-llama -r smoke -o OUT --master-port 70000",
      "--master-port must be 1..65535"),
    C("launcher-unknown", "convert tiny-llama -r smoke -o OUT --launcher torchrn --dry-run",
      "unknown launcher 'torchrn'", "did you mean 'torchrun'"),
    C("deepspeed-config-missing", "convert tiny-llama -r smoke -o OUT --deepspeed ds.json",
      "DeepSpeed config ds.json not found", "--deepspeed", "zero2"),
    C("resume-different-recipe", ["train-mntp", "tiny-llama", "-r", "smoke", "-o", "run", *TINY_MNTP,
                                  "mntp.lora.r=8"],
      "was made with a different recipe", "lora.r: 4 -> 8", "step-000002", "--force",
      setup=trained_run_without_stage_json, sub=True),
    # ---- export and enable-bidir options -----------------------------------------------------------
    C("export-not-a-run", "export notrun -o OUT", "is not a training run, checkpoint or model folder",
      "finished stage folder", setup=files({"notrun/readme.txt": "hi"}), sub=True),
    C("export-source-missing", "export nothere -o OUT", "SOURCE nothere does not exist"),
    C("export-unfinished-stage", "export stage -o OUT", "unfinished training stage", "--resume",
      setup=files({"stage/step-000002/": None})),
    C("export-bad-shard-size", "export notrun -o OUT --max-shard-size lots", "max shard size", "--max-shard-size",
      setup=files({"notrun/readme.txt": "hi"})),
    C("export-unknown-pooling", "export notrun -o OUT --pooling cls", "unknown pooling method 'cls'",
      setup=files({"notrun/readme.txt": "hi"})),
    C("export-calibration-missing", "export notrun -o OUT --calibration nofile.txt",
      "calibration data not found: nofile.txt", "--calibration", setup=files({"notrun/readme.txt": "hi"})),
    C("bidir-unknown-attn", "enable-bidir tiny-llama -o OUT --attn-implementation flashy",
      "unknown attn implementation 'flashy'", "--attn-implementation", "valid: auto, eager"),
    C("bidir-unknown-dtype", "enable-bidir tiny-llama -o OUT --dtype fp8", "unknown dtype 'fp8'", "--dtype"),
]


# --------------------------------------------------------------------------- running a case


class Ctx:
    """Per-module resources: an l2v cache (tiny models built once), an empty HF cache, a trained run."""

    def __init__(self, root: Path):
        self.root = root
        self.cache = root / "l2v-cache"
        self.hf_home = root / "hf-home"
        self._run: Path | None = None

    def env(self, extra: dict | None = None) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in ("L2V_DEBUG", "HF_TOKEN")}
        env.update(L2V_CACHE=str(self.cache), HF_HOME=str(self.hf_home), HF_HUB_OFFLINE="1",
                   TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
        env.update(extra or {})
        return env

    def tiny_mntp_run(self) -> Path:
        if self._run is None:
            work = self.root / "mntp-run"
            work.mkdir(exist_ok=True)
            p = l2v(["train-mntp", "tiny-llama", "-r", "smoke", "-o", "run", *TINY_MNTP], work, self.env())
            assert p.returncode == 0, p.stderr[-2000:]
            assert (work / "run" / "step-000002").is_dir() and (work / "run" / "stage.json").is_file()
            self._run = work / "run"
        return self._run


def l2v(argv, cwd, env, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "l2v_cli", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> Ctx:
    return Ctx(tmp_path_factory.mktemp("bad-inputs"))


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root with its kind, size and content hash (files) — what 'unchanged' means."""
    snap = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            snap[rel] = ("link", os.readlink(p))
        elif p.is_dir():
            snap[rel] = ("dir",)
        else:
            data = p.read_bytes()
            snap[rel] = ("file", len(data), hashlib.sha1(data).hexdigest())
    return snap


RESULTS: dict[str, str] = {}  # case id -> the error line (for the summary and docs/hardening.md)


def error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def check_case(case: Case, code: int, stderr: str, before: dict, after: dict) -> None:
    last = error_line(stderr)
    assert code == 2, f"exit code {code} (2 = a clean L2VError); stderr tail:\n{stderr[-1500:]}"
    assert last.startswith("l2v: error:"), f"last line is not an l2v error: {last!r}"
    missing = [part for part in case.expect if part not in last]
    assert not missing, f"{missing} not in {last!r}"
    assert "Traceback" not in stderr
    assert after == before, ("the failed command changed the working directory: "
                             f"added {sorted(set(after) - set(before))}, removed {sorted(set(before) - set(after))}, "
                             f"changed {sorted(k for k in before if k in after and before[k] != after[k])}")


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(reason=c.xfail, strict=True)]
                                               if c.xfail else []) for c in CASES])
def test_bad_input(case: Case, ctx: Ctx, tmp_path: Path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    if case.setup:
        case.setup(work, ctx)
    before = snapshot(work)
    if case.sub:
        p = l2v(list(case.argv), work, ctx.env(case.env))
        code, stderr = p.returncode, p.stderr
    else:
        for k, v in ctx.env(case.env).items():
            if os.environ.get(k) != v:
                monkeypatch.setenv(k, v)
        monkeypatch.delenv("L2V_DEBUG", raising=False)
        monkeypatch.chdir(work)
        code, stderr = run_in_process(list(case.argv), capsys)
    RESULTS[case.id] = error_line(stderr)
    check_case(case, code, stderr, before, snapshot(work))
    assert not list(work.glob("MARKER*")), "a YAML tag or model code was executed"


# --------------------------------------------------------------------------- disk full while saving


def test_disk_full_while_saving_is_one_line_and_leaves_nothing(ctx: Ctx, tmp_path: Path, monkeypatch, capsys):
    """`l2v enable-bidir tiny-llama -o OUT` when the disk fills up during the weights save."""
    import transformers.modeling_utils as mu

    for k, v in ctx.env().items():
        monkeypatch.setenv(k, v)
    from l2v_cli.modeling.aliases import tiny_model_dir

    tiny_model_dir("llama")  # built before the disk "fills up": the failure is in writing OUT
    calls = []

    def full_disk(tensors, filename, metadata=None):
        calls.append(filename)
        with open(filename, "wb") as f:  # half a file, as a real ENOSPC leaves it
            f.write(b"\0" * 1024)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    monkeypatch.setattr(mu, "safe_save_file", full_disk)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code, stderr = run_in_process(["enable-bidir", "tiny-llama", "-o", "OUT"], capsys)
    assert calls, "the save was not reached"
    last = error_line(stderr)
    RESULTS["disk-full-while-saving"] = last
    assert code == 2 and last.startswith("l2v: error: disk full while writing OUT"), stderr[-1500:]
    assert "free space" in last and "Traceback" not in stderr
    assert sorted(os.listdir(work)) == [], f"left behind: {os.listdir(work)}"  # no OUT, no .OUT.tmp-*


def test_disk_full_elsewhere_is_still_one_line(monkeypatch, capsys, tmp_path):
    """An ENOSPC outside an atomic folder (e.g. np.save of `encode`) still gets the disk-full line."""
    import l2v_cli.cli.main as main

    def boom(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "x.npy"))

    monkeypatch.setattr(main, "app", boom)
    code, stderr = run_in_process(["encode"], capsys)
    assert code == 2 and error_line(stderr).startswith("l2v: error: disk full while writing")
    assert "free space" in error_line(stderr)


# --------------------------------------------------------------------------- summary


def test_catalogue_size_and_summary():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    assert len(CASES) >= 30
    assert sum(c.sub for c in CASES) >= 10, "a representative subset must run as real subprocesses"
    commands = {c.argv[0] for c in CASES}
    assert {"recipes", "enable-bidir", "encode", "train-mntp", "train-simcse", "train-supervised", "export",
            "eval", "convert"} <= commands
    print(f"\nbad-input catalogue: {len(CASES)} cases ({sum(c.sub for c in CASES)} via subprocess, "
          f"{sum(bool(c.xfail) for c in CASES)} expected failures) + 2 disk-full cases")
    if os.environ.get("L2V_WRITE_CATALOGUE"):  # regenerate the table in docs/hardening.md
        def cell(text: str) -> str:
            return text.replace("|", "\\|")

        argv = {c.id: " ".join(a if a else "''" for a in c.argv) for c in CASES}
        rows = [f"| `{c.id}` | `l2v {cell(argv[c.id])}` | {cell(RESULTS.get(c.id, '(not run)'))} |"
                for c in CASES]
        Path(os.environ["L2V_WRITE_CATALOGUE"]).write_text("\n".join(rows) + "\n")
