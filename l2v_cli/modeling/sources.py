"""Resolve a MODEL spec to a local Hugging Face folder.

MODEL may be, checked in this order:
  1. a `.gguf` file — loaded with transformers (`gguf_file=`, dequantised to float32), saved once
     as safetensors + tokenizer into `$L2V_CACHE/gguf/<sha256[:16]>/` (default ~/.cache/l2v) and
     reused on later calls; a truncated or corrupt file is an L2VError naming it;
  2. a local folder — must hold config.json (a Hugging Face model folder);
  3. an alias (`l2v models`): `tiny-<arch>` is built into the cache; a real model uses its
     offline GGUF package when installed, else its hub id;
  4. a hub id `org/name` — `huggingface_hub.snapshot_download` of the weights (safetensors), config
     and tokenizer files only; HF_HUB_OFFLINE=1 is honoured and an unreachable Hub is one clear
     error, not a traceback. Set L2V_HUB_TIMEOUT (seconds, default 10) to change the timeout.
Anything else that looks like a path is "no such file or folder"; anything else is an unknown
alias (with close matches).

A config that needs the repo's own Python code (`auto_map` with a model_type transformers does
not know) is refused unless `trust_remote_code=True` (`--trust-remote-code`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from l2v_cli.errors import L2VError, closest
from l2v_cli.modeling.aliases import TINY_PREFIX, ModelAlias, cache_root, find_alias, get_alias

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9_.\-]+$")
GGUF_MAGIC = b"GGUF"
# What a snapshot needs: weights, config, tokenizer (json/sentencepiece/tiktoken/merges), template.
HUB_ALLOW = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken", "*.txt", "*.jinja"]
HUB_IGNORE = ["original/*", "consolidated*", "onnx/*", "openvino/*", "*.gguf", "*/*.safetensors"]


@dataclass
class ResolvedModel:
    """A local Hugging Face folder for MODEL, and how it was obtained."""

    path: Path
    alias: Optional[ModelAlias] = None
    kind: str = "folder"  # folder | gguf | tiny | hub
    spec: str = ""  # what the user typed
    origin: str = ""  # the folder, .gguf file or hub id the weights came from
    extra: dict = field(default_factory=dict)  # e.g. {"gguf_sha256": ...}

    def describe(self) -> dict:
        """JSON-ready provenance (recorded in the `l2v` block of written config.json files)."""
        out = {"spec": self.spec, "kind": self.kind, "origin": self.origin}
        if self.alias is not None:
            out["alias"] = self.alias.name
            if self.alias.hub_id:
                out["hub_id"] = self.alias.hub_id
        out.update(self.extra)
        return out


def _note(msg: str) -> None:
    print(f"l2v: {msg}", file=sys.stderr, flush=True)


def looks_like_path(spec: str) -> bool:
    if spec in (".", "..") or spec.startswith(("/", "./", "../", "~", ".\\")) or "\\" in spec:
        return True
    if spec.count("/") >= 2 or spec.endswith("/"):
        return True
    return Path(spec).suffix.lower() in (".gguf", ".safetensors", ".bin", ".json", ".pt", ".pth")


def resolve_model(spec: str, trust_remote_code: bool = False, *, allow_pickle: bool = False) -> ResolvedModel:
    """Turn MODEL (folder, .gguf, alias, tiny-<arch>, hub id) into a local HF folder; L2VError otherwise."""
    spec = str(spec).strip()
    if not spec:
        raise L2VError("MODEL is empty", where="MODEL",
                       fix="give a model folder, a .gguf file, an alias (`l2v models`) or a hub id")
    p = Path(spec).expanduser()
    if p.is_file() and (p.suffix.lower() == ".gguf" or _has_gguf_magic(p)):
        path, sha = gguf_to_folder(p)
        return ResolvedModel(path, None, "gguf", spec, str(p.resolve()), {"gguf_sha256": sha})
    if p.is_dir():
        path = check_model_folder(p, trust_remote_code)
        return ResolvedModel(path, None, "folder", spec, str(path))
    if p.exists():
        raise L2VError(f"{p} is a file but not a .gguf model", where="MODEL",
                       fix="give a Hugging Face model folder (with config.json), or a .gguf file")
    alias = find_alias(spec)
    if alias is not None or spec.lower().startswith(TINY_PREFIX):
        return resolve_alias(get_alias(spec), spec, trust_remote_code, allow_pickle)
    if HUB_ID.match(spec) and not spec.lower().endswith(".gguf"):
        path = fetch_from_hub(spec, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
        return ResolvedModel(path, None, "hub", spec, spec)
    if looks_like_path(spec):
        raise _missing_path(p, spec)
    get_alias(spec)  # raises: unknown alias, with close matches
    raise AssertionError("unreachable")


def resolve_alias(alias: ModelAlias, spec: str = "", trust_remote_code: bool = False,
                  allow_pickle: bool = False) -> ResolvedModel:
    spec = spec or alias.name
    if alias.is_tiny:
        from l2v_cli.modeling.aliases import tiny_model_dir

        return ResolvedModel(tiny_model_dir(alias.tiny_arch), alias, "tiny", spec, f"tiny:{alias.tiny_arch}")
    if alias.offline is not None and alias.offline.installed():
        gguf = alias.offline.locate(alias.name)
        path, sha = gguf_to_folder(gguf, reinstall=alias.offline.pip_command() + " --force-reinstall")
        return ResolvedModel(path, alias, "gguf", spec, str(gguf), {"gguf_sha256": sha})
    if not alias.hub_id:
        raise L2VError(f"alias {alias.name} has no hub id and no offline copy", where="configs/models.yaml")
    extra_fix = ""
    if alias.offline is not None:
        extra_fix = f"; or install its offline copy: {alias.offline.pip_command()}"
    path = fetch_from_hub(alias.hub_id, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
                          what=f"{alias.name} ({alias.hub_id})", extra_fix=extra_fix)
    return ResolvedModel(path, alias, "hub", spec, alias.hub_id)


# --------------------------------------------------------------------------- local folders


def _missing_path(p: Path, shown: str | None = None) -> L2VError:
    fix = "check the path"
    parent = p.parent if str(p.parent) else Path(".")
    if parent.is_dir():
        try:
            names = [c.name for c in parent.iterdir() if not c.name.startswith(".")]
        except OSError:
            names = []
        near = closest(p.name, names)
        if near:
            fix = "did you mean " + " or ".join(repr(str(parent / n)) for n in near) + "?"
    elif not parent.exists():
        fix = f"the folder {parent} does not exist either; check the path"
    return L2VError(f"no such file or folder: {shown or p}", where="MODEL", fix=fix)


def check_model_folder(path: Path, trust_remote_code: bool = False) -> Path:
    """A local folder must be a Hugging Face model folder; explain precisely when it is not."""
    path = path.resolve()
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if ggufs:
            fix = f"pass the GGUF file itself, e.g. {ggufs[0]}"
        elif (path / "adapter_config.json").is_file():
            fix = ("this is a LoRA adapter folder, not a full model: pass the base model, or a folder "
                   "written by an l2v stage (which merges adapters)")
        elif (path / "modules.json").is_file():
            fix = "this looks like a sentence-transformers folder: pass its underlying transformer folder"
        else:
            fix = ("point MODEL at a Hugging Face model folder (config.json, *.safetensors, tokenizer "
                   "files), a .gguf file, an alias (`l2v models`) or a hub id")
        raise L2VError(f"{path} has no config.json, so it is not a Hugging Face model folder",
                       where="MODEL", fix=fix)
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise L2VError(f"cannot read {cfg_file}: {e}", where="MODEL",
                       fix="the file is damaged: re-download or re-create the model folder") from e
    if not isinstance(cfg, dict):
        raise L2VError(f"{cfg_file} is not a JSON object", where="MODEL",
                       fix="the file is damaged: re-download or re-create the model folder")
    check_remote_code(cfg, str(path), trust_remote_code)
    return path


# Already bidirectional: nothing for LLM2Vec to convert (they can be used as encoders directly).
ENCODER_ONLY = {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "deberta", "deberta-v2",
                "camembert", "albert", "mpnet", "modernbert", "ernie", "xlm", "megatron-bert"}


def check_decoder_only(path: Path) -> None:
    """Refuse encoder-only architectures by name before any weights are read."""
    try:
        model_type = json.loads((Path(path) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return
    if model_type in ENCODER_ONLY:
        raise L2VError(f"model_type {model_type!r} is an encoder-only architecture (already bidirectional), "
                       "not a decoder-only LLM", where=str(path),
                       fix="l2v converts decoders (llama, mistral, qwen2, gemma, phi3, ...); use this model "
                       "as an encoder directly, e.g. with sentence-transformers")


def check_remote_code(cfg: dict, where: str, trust_remote_code: bool) -> None:
    """Refuse configs that need the repo's own Python code unless the user trusts it."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = cfg.get("model_type")
    known = model_type in CONFIG_MAPPING_NAMES
    if cfg.get("auto_map") and not known and not trust_remote_code:
        raise L2VError(
            f"{where} needs custom Python code from the model's repo (config.json has auto_map and "
            f"model_type {model_type!r} is unknown to transformers)", where="MODEL",
            fix="read that code, then pass --trust-remote-code if you trust it")
    if model_type is not None and not known and not cfg.get("auto_map"):
        import transformers

        raise L2VError(
            f"model_type {model_type!r} is not supported by transformers {transformers.__version__}",
            where=where, fix="upgrade transformers (pip install -U transformers), or use another model")


# --------------------------------------------------------------------------- GGUF files


def _has_gguf_magic(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def file_sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _gguf_problem(p: Path) -> Optional[str]:
    """Why transformers could not load this GGUF, from gguf's own reader (None = file looks fine)."""
    try:
        import gguf

        reader = gguf.GGUFReader(str(p))
    except Exception as e:  # the reader raises ValueError/struct.error/... on damaged files
        return f"corrupt or truncated ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    try:
        f = reader.fields["general.architecture"]
        arch = bytes(f.parts[f.data[0]]).decode()
    except Exception:
        return "corrupt: no general.architecture field"
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

        if arch not in GGUF_SUPPORTED_ARCHITECTURES:
            return (f"its architecture {arch!r} is not supported by transformers' GGUF loader "
                    f"(supported: {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))})")
    except ImportError:
        pass
    return None


def gguf_to_folder(p: str | Path, reinstall: str | None = None) -> tuple[Path, str]:
    """Convert a .gguf to a safetensors HF folder in the cache (once); return (folder, sha256).

    `reinstall` is the fix suggested for a damaged file (default: re-download it)."""
    p = Path(p).expanduser()
    if not p.is_file():
        raise _missing_path(p)
    fix_damaged = reinstall or "re-download the file (or reinstall the package that ships it)"
    if p.stat().st_size < 32 or not _has_gguf_magic(p):
        raise L2VError(f"{p} is not a GGUF file (it does not start with the GGUF magic bytes)",
                       where=str(p), fix=fix_damaged)
    try:
        sha = file_sha256(p)
    except OSError as e:
        raise L2VError(f"cannot read {p}: {e.strerror or e}", where=str(p), fix="check the file's permissions") from e
    target = cache_root() / "gguf" / sha[:16]
    if (target / "l2v_gguf.json").is_file() and (target / "config.json").is_file():
        return target, sha

    import warnings

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from l2v_cli.utils.atomic import atomic_cache_dir

    _note(f"converting {p.name} to safetensors (dequantised, float32; once — cached in {target})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
    except MemoryError:
        raise
    except Exception as e:
        problem = _gguf_problem(p)
        if problem is None:
            problem = f"transformers could not load it ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
            raise L2VError(f"cannot convert {p}: {problem}", where=str(p),
                           fix="convert it to a Hugging Face folder another way, or use the original "
                           "safetensors checkpoint") from e
        if "not supported" in problem:
            raise L2VError(f"cannot convert {p}: {problem}", where=str(p),
                           fix="use the model's Hugging Face (safetensors) checkpoint instead") from e
        raise L2VError(f"GGUF file {p} is {problem}", where=str(p), fix=fix_damaged) from e
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # weights are already plain float tensors; drop the gguf marker
        quantizer.remove_quantization_config(model)
    with atomic_cache_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        import transformers

        (tmp / "l2v_gguf.json").write_text(json.dumps(
            {"source": str(p.resolve()), "sha256": sha, "size": p.stat().st_size, "dtype": "float32",
             "transformers": transformers.__version__}, indent=2) + "\n")
    return target, sha


# --------------------------------------------------------------------------- Hugging Face Hub


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _offline_choices() -> str:
    from l2v_cli.modeling.aliases import load_aliases

    ready = [a.name for a in load_aliases().values() if a.offline_installed()]
    return ", ".join(ready) if ready else "none installed; `l2v models` shows how"


def fetch_from_hub(repo_id: str, *, trust_remote_code: bool = False, allow_pickle: bool = False,
                   what: str | None = None, extra_fix: str = "") -> Path:
    """Download (or find in the HF cache) the files a model needs; return the snapshot folder."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    local_hint = f"no local folder named {repo_id!r} either; " if what is None else ""
    what = what or repo_id
    allow = list(HUB_ALLOW) + (["*.py"] if trust_remote_code else []) + (["*.bin"] if allow_pickle else [])
    offline = _hub_offline()
    timeout = float(os.environ.get("L2V_HUB_TIMEOUT", "10"))
    unreachable_fix = (f"{local_hint}use a local model folder, a .gguf file, or an alias with an offline "
                       f"package (installed: {_offline_choices()}){extra_fix}")
    try:
        snap = snapshot_download(repo_id, allow_patterns=allow, ignore_patterns=HUB_IGNORE,
                                 etag_timeout=timeout, local_files_only=offline)
    except GatedRepoError as e:
        raise L2VError(f"{what} is gated on the Hugging Face Hub", where=repo_id,
                       fix=f"accept its licence at https://huggingface.co/{repo_id} and log in "
                       "(`hf auth login` or HF_TOKEN)") from e
    except RepositoryNotFoundError as e:
        raise L2VError(f"no model {repo_id!r} on the Hugging Face Hub (or it is private)", where="MODEL",
                       fix="check the hub id; for a private repo log in (`hf auth login` or HF_TOKEN); "
                       "`l2v models` lists the aliases") from e
    except LocalEntryNotFoundError as e:
        why = " (HF_HUB_OFFLINE is set, and it is not in the local Hugging Face cache)" if offline else ""
        raise L2VError(f"cannot reach the Hugging Face Hub to fetch {what}{why}", where="MODEL",
                       fix=unreachable_fix) from e
    except HfHubHTTPError as e:
        raise L2VError(f"the Hugging Face Hub refused to send {what}: {str(e).splitlines()[0]}",
                       where=repo_id, fix="retry later, or use a local folder / .gguf file") from e
    except (OSError, ConnectionError, TimeoutError) as e:
        raise L2VError(f"cannot reach the Hugging Face Hub to fetch {what} ({type(e).__name__})",
                       where="MODEL", fix=unreachable_fix) from e
    except Exception as e:  # httpx errors and the like: still a network failure to the user
        if type(e).__module__.split(".")[0] in ("httpx", "httpcore", "requests", "urllib3"):
            raise L2VError(f"cannot reach the Hugging Face Hub to fetch {what} ({type(e).__name__})",
                           where="MODEL", fix=unreachable_fix) from e
        raise
    path = Path(snap)
    if not (path / "config.json").is_file():
        raise L2VError(f"{what} on the Hub has no config.json: not a transformers model", where=repo_id,
                       fix="use a transformers-format repo, a local folder or a .gguf file")
    return check_model_folder(path, trust_remote_code)


__all__ = ["ResolvedModel", "resolve_model", "resolve_alias", "gguf_to_folder", "fetch_from_hub",
           "check_model_folder", "check_remote_code", "looks_like_path", "file_sha256"]
