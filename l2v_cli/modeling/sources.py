"""Resolve a MODEL spec to a local Hugging Face folder (minimal version: local folders and tiny-<arch>)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from l2v_cli.errors import L2VError


@dataclass
class ResolvedModel:
    path: Path
    alias: object = None


def resolve_model(spec: str, trust_remote_code: bool = False) -> ResolvedModel:
    p = Path(spec).expanduser()
    if p.is_dir():
        return ResolvedModel(p)
    raise L2VError(f"model {spec!r} not found", where="MODEL", fix="give a model folder")
