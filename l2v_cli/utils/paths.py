"""Where relative paths in recipes point: the working directory first, then the shipped data."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def shipped_data_dir() -> Path:
    return Path(str(files("l2v_cli.assets")))


def resolve_data_path(path: str | Path) -> Path:
    """`data/x` means ./data/x when it exists, else the copy shipped with l2v (data/ in the repo)."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    parts = p.parts
    if parts and parts[0] == "data":
        shipped = shipped_data_dir().joinpath(*parts[1:])
        if shipped.exists():
            return shipped
    return p
