"""Model families and their defaults (configs/families.yaml), and which family a MODEL belongs to —
found without loading weights: an alias names its family in configs/models.yaml; a folder, a
stage folder, a GGUF file or a cached hub id has a `model_type` (config.json) or a GGUF
`general.architecture`. A model whose family has no entry gets the `generic` defaults.

Nothing here imports torch or transformers (`--dry-run` and `--print-config` stay instant).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Optional

from l2v_cli.errors import L2VError

GENERIC = "generic"
_FIELDS = {"mask_token": str, "mask_probability": (float, int), "mask_strategy": str, "attn_implementation": str,
           "source": str, "model_types": list, "note": str}
_REQUIRED = ("mask_token", "mask_probability", "mask_strategy", "attn_implementation", "source")


@dataclass(frozen=True)
class Family:
    name: str
    mask_token: str
    mask_probability: float
    mask_strategy: str
    attn_implementation: str
    source: str
    model_types: tuple[str, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class FamilyMatch:
    """The family of one MODEL and how it was found; `known` is False when the generic defaults apply."""

    family: Family
    known: bool
    model_type: Optional[str]  # what the model says it is (None: could not tell)
    how: str  # e.g. "alias mistral-7b (configs/models.yaml)", "config.json model_type 'qwen2'"

    def describe(self) -> str:
        if self.known:
            return f"{self.family.name} (from {self.how})"
        what = f"model_type {self.model_type!r}" if self.model_type else "an unknown model type"
        return f"generic ({what} from {self.how} has no entry in configs/families.yaml)"


def _bad(where: str, what: str) -> L2VError:
    return L2VError(f"invalid family file: {what}", where=f"configs/families.yaml:{where}",
                    fix="fix configs/families.yaml (see the field list at its top)")


@functools.lru_cache(maxsize=1)
def load_families() -> dict[str, Family]:
    import yaml

    data = yaml.safe_load((files("l2v_cli.configs") / "families.yaml").read_text(encoding="utf-8")) or {}
    out = {}
    for name, raw in data.items():
        if not isinstance(raw, dict):
            raise _bad(name, "each family must be a mapping")
        for key, value in raw.items():
            if key not in _FIELDS:
                raise _bad(f"{name}.{key}", f"unknown field {key!r}")
            if not isinstance(value, _FIELDS[key]) or isinstance(value, bool):
                raise _bad(f"{name}.{key}", f"wrong type {type(value).__name__}")
        missing = [k for k in _REQUIRED if k not in raw]
        if missing:
            raise _bad(name, f"missing field {missing[0]!r}")
        if not 0 < float(raw["mask_probability"]) < 1 or raw["mask_strategy"] not in ("80-10-10", "all"):
            raise _bad(name, "mask_probability must be in (0, 1) and mask_strategy 80-10-10 or all")
        out[name] = Family(name=name, mask_token=raw["mask_token"], mask_probability=float(raw["mask_probability"]),
                           mask_strategy=raw["mask_strategy"], attn_implementation=raw["attn_implementation"],
                           source=raw["source"], model_types=tuple(raw.get("model_types", ())),
                           note=raw.get("note", ""))
    if GENERIC not in out:
        raise _bad(GENERIC, "the generic family is missing")
    return out


def family_named(name: Optional[str]) -> Optional[Family]:
    """The family called `name`, or the one listing it among its model_types; None if none does."""
    if not name:
        return None
    fams = load_families()
    if name in fams and name != GENERIC:
        return fams[name]
    return next((f for f in fams.values() if name in f.model_types), None)


def match(model_type: Optional[str], how: str) -> FamilyMatch:
    fam = family_named(model_type)
    if fam is None:
        return FamilyMatch(load_families()[GENERIC], False, model_type, how)
    return FamilyMatch(fam, True, model_type, how)


def config_model_type(cfg: dict) -> Optional[str]:
    text = cfg.get("text_config")
    if isinstance(text, dict) and text.get("model_type"):
        return str(text["model_type"])
    mt = cfg.get("model_type")
    return str(mt) if mt else None


_GGUF_SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # type id -> bytes
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def _gguf_architecture(path: Path) -> Optional[str]:
    """`general.architecture` from a GGUF file's header (read up to that key: gguf's own reader
    parses the whole vocabulary first, seconds for a large one). None if the file does not say."""
    import struct

    def read(f, fmt):
        data = f.read(struct.calcsize(fmt))
        return struct.unpack(fmt, data)[0]

    def skip(f, kind):
        if kind == _GGUF_STRING:
            f.seek(read(f, "<Q"), 1)
        elif kind == _GGUF_ARRAY:
            inner, n = read(f, "<I"), read(f, "<Q")
            if inner in _GGUF_SCALARS:
                f.seek(n * _GGUF_SCALARS[inner], 1)
            else:
                for _ in range(n):
                    skip(f, inner)
        else:
            f.seek(_GGUF_SCALARS[kind], 1)

    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF" or read(f, "<I") < 2:
                return None
            read(f, "<Q")  # tensor count
            for _ in range(read(f, "<Q")):  # key/value pairs
                key = f.read(read(f, "<Q")).decode("utf-8", "replace")
                kind = read(f, "<I")
                if key == "general.architecture" and kind == _GGUF_STRING:
                    return f.read(read(f, "<Q")).decode()
                skip(f, kind)
    except (OSError, struct.error, KeyError, UnicodeDecodeError):  # not readable as GGUF: the load will say why
        return None
    return None


def family_of(model: str | Path) -> FamilyMatch:
    """The family of MODEL (alias, tiny-<arch>, folder, stage folder, .gguf, hub id), without weights."""
    from l2v_cli.modeling.aliases import find_alias, load_aliases

    spec = str(model).strip()
    p = Path(spec).expanduser()
    if p.is_dir():
        stage = p / "stage.json"
        if stage.is_file():  # a training stage: its chain's base model
            try:
                return family_of(json.loads(stage.read_text())["base_model"])
            except (OSError, ValueError, KeyError):
                pass
        cfg_file = p / "config.json"
        if cfg_file.is_file():
            try:
                cfg = json.loads(cfg_file.read_text())
            except (OSError, ValueError):
                cfg = {}
            return match(config_model_type(cfg), f"{cfg_file.name} model_type")
        inp = p / "input.json"  # an unfinished stage records what it trains from
        if inp.is_file():
            try:
                return family_of(json.loads(inp.read_text())["input"])
            except (OSError, ValueError, KeyError):
                pass
        return match(None, f"folder {p.name}")
    if p.is_file():
        return match(_gguf_architecture(p), f"GGUF {p.name} general.architecture")
    alias = find_alias(spec)
    if alias is None:  # a hub id that is also an alias's
        alias = next((a for a in load_aliases().values() if a.hub_id and a.hub_id.lower() == spec.lower()), None)
    if alias is not None:
        fam = family_named(alias.family)
        how = f"alias {alias.name} (configs/models.yaml)"
        return FamilyMatch(fam, True, alias.family, how) if fam else match(alias.family, how)
    try:  # a hub id whose config.json is in the local cache (never downloaded here)
        from huggingface_hub import hf_hub_download

        cfg = json.loads(Path(hf_hub_download(spec, "config.json", local_files_only=True)).read_text())
        return match(config_model_type(cfg), f"hub cache {spec} config.json model_type")
    except Exception:
        return match(None, f"{spec!r} (no alias, folder or cached config.json)")


__all__ = ["Family", "FamilyMatch", "GENERIC", "config_model_type", "family_named", "family_of", "load_families", "match"]
