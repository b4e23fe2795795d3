"""Security properties of the CLI, each shown by trying to break it.

* repo code (`auto_map` + *.py in a model folder) never runs unless --trust-remote-code;
* no recipe (file or override) can turn that, or pickle loading, on: there are no such keys;
* pickle-only (.bin) weights are refused unless --allow-pickle (enable-bidir and encode have it);
* recipes and overrides are parsed with yaml.safe_load: a `!!python/...` tag runs nothing;
* launcher commands are argv lists, never shell strings: spaces and `;` in paths stay one argument;
* `convert` writes only under OUT (planned folders, --dry-run writes nothing at all);
* an HF token in the environment is never written into a run folder.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_helpers import run_in_process

SECRET = "hf_secret123"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("l2v-cache")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, cache, tmp_path_factory):
    monkeypatch.setenv("L2V_CACHE", str(cache))
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf-home")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("L2V_DEBUG", raising=False)


def env(**extra) -> dict:
    e = {k: v for k, v in os.environ.items() if k != "L2V_DEBUG"}
    e.update(TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", **extra)
    return e


def l2v(*argv, cwd, timeout=600, **extra_env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "l2v_cli", *argv], cwd=cwd, env=env(**extra_env),
                          capture_output=True, text=True, timeout=timeout)


def last_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def tiny_llama() -> Path:
    from l2v_cli.modeling.aliases import tiny_model_dir

    return tiny_model_dir("llama")


def remote_code_folder(d: Path, name: str, model_type: str | None) -> tuple[Path, Path]:
    """A copy of tiny-llama whose config.json maps the Auto classes to evil.py, which writes a
    marker file when imported. model_type None keeps 'llama' (a type transformers knows)."""
    folder = d / name
    shutil.copytree(tiny_llama(), folder)
    cfg = json.loads((folder / "config.json").read_text())
    if model_type:
        cfg["model_type"] = model_type
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel",
                       "AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    marker = d / f"MARKER-{name}"
    (folder / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('repo code ran')\n"
        "from transformers import LlamaConfig as EvilConfig, LlamaModel as EvilModel\n")
    return folder, marker


# --------------------------------------------------------------------------- remote code


def test_remote_code_is_refused_without_the_flag(tmp_path, capsys):
    folder, marker = remote_code_folder(tmp_path, "custom", "evilmodel")
    (tmp_path / "t.txt").write_text("hello\n")
    p = l2v("enable-bidir", str(folder), "-o", "OUT", cwd=tmp_path)  # a real process
    assert p.returncode == 2 and "Traceback" not in p.stderr
    line = last_line(p.stderr)
    assert line.startswith("l2v: error:") and "--trust-remote-code" in line and "custom Python code" in line
    code, err = run_in_process(["encode", str(folder), "-i", str(tmp_path / "t.txt"), "-o", str(tmp_path / "e.npy")],
                           capsys)
    assert code == 2 and "--trust-remote-code" in last_line(err)
    assert not marker.exists(), "the repo's Python code ran"
    assert not (tmp_path / "OUT").exists() and not (tmp_path / "e.npy").exists()


def test_auto_map_on_a_known_model_type_never_runs_repo_code(tmp_path, capsys):
    """model_type 'llama' is built in: the model loads with transformers' own class, evil.py stays unread."""
    folder, marker = remote_code_folder(tmp_path, "known", None)
    (tmp_path / "t.txt").write_text("hello\nworld\n")
    code, err = run_in_process(["encode", str(folder), "-i", str(tmp_path / "t.txt"), "-o", str(tmp_path / "e.npy"),
                            "--no-progress"], capsys)
    assert code == 0, err[-2000:]
    assert (tmp_path / "e.npy").is_file()
    assert not marker.exists(), "the repo's Python code ran without --trust-remote-code"


def test_the_marker_would_catch_executed_code(tmp_path):
    """Control: with --trust-remote-code the same folder's code does run — so the checks above can fail."""
    folder, marker = remote_code_folder(tmp_path, "trusted", "evilmodel")
    (tmp_path / "t.txt").write_text("hello\n")
    l2v("encode", str(folder), "-i", "t.txt", "-o", "e.npy", "--trust-remote-code", "--no-progress", cwd=tmp_path)
    assert marker.exists()


@pytest.mark.parametrize("override", ["trust_remote_code=true", "bidir.trust_remote_code=true",
                                      "allow_pickle=true", "export.trust_remote_code=true"])
def test_no_recipe_override_can_enable_remote_code_or_pickle(override, capsys):
    code, err = run_in_process(["recipes", "show", "smoke", override], capsys)
    line = last_line(err)
    assert code == 2 and line.startswith("l2v: error: unknown key") and override.split("=")[0] in line


def test_no_recipe_file_can_enable_remote_code(tmp_path, capsys):
    f = tmp_path / "r.yaml"
    f.write_text("name: r\nstages: [enable-bidir, export]\ntrust_remote_code: true\n")
    code, err = run_in_process(["convert", "tiny-llama", "-r", str(f), "-o", str(tmp_path / "OUT")], capsys)
    line = last_line(err)
    assert code == 2 and "unknown key 'trust_remote_code'" in line and "r.yaml:3" in line
    assert not (tmp_path / "OUT").exists()


def test_the_schema_has_no_security_switches():
    from l2v_cli.config import schema_fields

    keys = [f.key for f in schema_fields()]
    assert keys and not [k for k in keys if "remote_code" in k or "pickle" in k]


# --------------------------------------------------------------------------- pickle weights


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pickle ran')",))


def pickle_folder(d: Path) -> tuple[Path, Path]:
    folder = d / "pickled"
    shutil.copytree(tiny_llama(), folder)
    (folder / "model.safetensors").unlink()
    marker = d / "MARKER-pickle"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Exploit(marker)))
    return folder, marker


@pytest.mark.parametrize("command", ["enable-bidir", "encode"])
def test_pickle_weights_are_refused_without_allow_pickle(command, tmp_path, capsys):
    folder, marker = pickle_folder(tmp_path)
    (tmp_path / "t.txt").write_text("hello\n")
    out = tmp_path / ("OUT" if command == "enable-bidir" else "e.npy")
    argv = [command, str(folder), "-o", str(out)] + (["-i", str(tmp_path / "t.txt")] if command == "encode" else [])
    code, err = run_in_process(argv, capsys)
    line = last_line(err)
    assert code == 2 and "only pickle weights" in line and "--allow-pickle" in line
    assert not marker.exists() and not out.exists()


def test_enable_bidir_and_encode_offer_allow_pickle():
    from typer.main import get_command

    from l2v_cli.cli.main import app

    cli = get_command(app)
    for name in ("enable-bidir", "encode"):
        opts = {o for p in cli.commands[name].params for o in getattr(p, "opts", [])}
        assert "--allow-pickle" in opts and "--trust-remote-code" in opts, name


def test_allow_pickle_loads_a_trusted_bin_checkpoint(tmp_path, capsys):
    """The flag is a real opt-in: a legitimate .bin-only copy of tiny-llama encodes with it."""
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "bin-only"
    shutil.copytree(tiny_llama(), folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    (tmp_path / "t.txt").write_text("a\nb\n")
    argv = ["encode", str(folder), "-i", str(tmp_path / "t.txt"), "-o", str(tmp_path / "e.npy"), "--no-progress"]
    code, err = run_in_process(argv, capsys)
    assert code == 2 and "--allow-pickle" in last_line(err)
    code, err = run_in_process(argv + ["--allow-pickle"], capsys)
    assert code == 0, err[-2000:]
    import numpy as np

    assert np.load(tmp_path / "e.npy").shape[0] == 2


# --------------------------------------------------------------------------- YAML


def test_yaml_python_tags_in_a_recipe_run_nothing(tmp_path):
    marker = tmp_path / "MARKER-yaml"
    f = tmp_path / "evil.yaml"
    f.write_text(f'name: evil\nstages: !!python/object/apply:os.system ["touch {marker}"]\n')
    p = l2v("recipes", "show", str(f), cwd=tmp_path)
    line = last_line(p.stderr)
    assert p.returncode == 2 and line.startswith("l2v: error: unsupported YAML tag") and "evil.yaml:2" in line
    assert not marker.exists()


@pytest.mark.parametrize("value", ['!!python/object/apply:os.system ["touch {m}"]',
                                   "!!python/object/new:subprocess.Popen [[touch, {m}]]"])
def test_yaml_python_tags_in_an_override_run_nothing(value, tmp_path, capsys):
    marker = tmp_path / "MARKER-override"
    code, err = run_in_process(["recipes", "show", "smoke", "seed=" + value.format(m=marker)], capsys)
    assert code == 2 and "l2v: error: cannot parse the value of override" in last_line(err)
    assert not marker.exists()


# --------------------------------------------------------------------------- launcher argv


def test_launcher_commands_are_argv_lists_and_paths_stay_one_argument(tmp_path, monkeypatch):
    from l2v_cli import launch as L

    nasty = str(tmp_path / "my run; rm -rf ~ && echo $(whoami)")
    worker = ["train-mntp", nasty, nasty + "/out", nasty + "/recipe.yaml", "--resume"]
    specs = [L.Launch(), L.Launch(launcher="torchrun", gpus=2),
             L.Launch(launcher="deepspeed", gpus=2, deepspeed=nasty + "/ds.json"),
             L.Launch(launcher="deepspeed", gpus=2, nodes=2, hostfile=nasty + "/hosts")]
    for spec in specs:
        argv = L.build_argv(spec, worker)
        assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
        assert argv.count(nasty) == 1 and nasty + "/out" in argv  # never split, never joined
        if spec.hostfile:
            assert argv[argv.index("--hostfile") + 1] == spec.hostfile

    seen = {}

    class FakePopen:
        def __init__(self, args, **kwargs):
            seen.update(args=args, kwargs=kwargs)
            self.stdout = iter(())

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(L.subprocess, "Popen", FakePopen)
    L.run(L.build_argv(specs[1], worker), tmp_path / "log.txt")
    assert isinstance(seen["args"], list) and not seen["kwargs"].get("shell")
    assert "shell=True" not in Path(L.__file__).read_text()


# --------------------------------------------------------------------------- outputs stay under OUT


def test_convert_plans_every_stage_folder_inside_out(tmp_path):
    from l2v_cli.config import load_recipe
    from l2v_cli.stages.convert import plan

    out = tmp_path / "run"
    recipe = load_recipe("smoke", ["name=../../escape", "description=../../../etc"])
    stages = plan(recipe, "../../../tiny-llama", out)
    assert [s.name for s in stages] == list(recipe.stages)
    for s in stages:
        assert s.folder.resolve().is_relative_to(out.resolve()), s.folder


def test_convert_dry_run_writes_nothing(tmp_path):
    before = sorted(p.name for p in tmp_path.iterdir())
    p = l2v("convert", "tiny-llama", "--recipe", "smoke", "-o", "OUT", "--dry-run",
            "mntp.data.path=../../../../../../etc/hostname", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "stage plan:" in p.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # not even OUT


# --------------------------------------------------------------------------- tokens


def test_hf_token_is_never_written_into_a_run(tmp_path, cache):
    tiny = ["mntp.train.max_steps=2", "mntp.train.save_steps=2", "mntp.data.max_samples=20",
            "simcse.train.max_steps=2", "simcse.train.save_steps=2", "simcse.data.max_samples=16",
            "supervised.train.max_steps=2", "supervised.train.save_steps=2", "supervised.data.max_samples=16",
            "eval.limit=16"]
    p = l2v("convert", "tiny-llama", "--recipe", "smoke", "-o", "OUT", *tiny, cwd=tmp_path, HF_TOKEN=SECRET,
            HUGGING_FACE_HUB_TOKEN=SECRET)
    assert p.returncode == 0, p.stderr[-3000:]
    out = tmp_path / "OUT"
    assert (out / "final" / "model.safetensors").is_file()
    scanned, leaks = 0, []
    for root in (out, cache):
        for f in root.rglob("*"):
            if f.is_file() and not f.is_symlink():
                scanned += 1
                if SECRET.encode() in f.read_bytes():
                    leaks.append(str(f))
    assert scanned > 20 and not leaks, leaks
    assert SECRET not in p.stdout + p.stderr
