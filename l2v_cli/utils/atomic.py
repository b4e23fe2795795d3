"""Write output folders atomically: all or nothing, never a half-written OUT.

    with atomic_dir(out, overwrite=False) as tmp:
        model.save_pretrained(tmp)      # write everything into `tmp`
    # here `out` exists and is complete; on any exception neither `out` (new) nor `tmp` is left

`tmp` is a hidden sibling of OUT (`.OUT.tmp-<pid>`), on the same filesystem, so the final step
is a rename. With `overwrite=True` an existing OUT is swapped out only after the new one is
complete, and the old one is deleted after the swap.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Iterator

from l2v_cli.errors import L2VError


def check_writable_parent(out: Path, what: str = "OUT") -> Path:
    """Create OUT's parent folder if needed and check we can write there; return it."""
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise L2VError(f"cannot create the folder {parent} for {what}: {e.strerror or e}",
                       where=str(out), fix="choose an output path in a folder you can write to") from e
    if not parent.is_dir():
        raise L2VError(f"{parent} is not a folder", where=str(out),
                       fix="choose an output path whose parent is a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise L2VError(f"no write permission in {parent}", where=str(out),
                       fix="choose an output path in a folder you can write to")
    return parent


def _normal_permissions(folder: Path) -> None:
    """Give everything under `folder` the permissions a plain write would (some writers, e.g.
    safetensors via a temp file, leave 0600 files that other users of a shared OUT cannot read)."""
    umask = os.umask(0)
    os.umask(umask)
    for root, dirs, names in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~umask)
        for n in names:
            p = os.path.join(root, n)
            if not os.path.islink(p):
                os.chmod(p, 0o666 & ~umask)
    os.chmod(folder, 0o777 & ~umask)


def _is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def _disk_full(out: Path, what: str) -> L2VError:
    """ENOSPC while writing: one clear line (the temp folder is already gone, OUT untouched)."""
    try:
        free = f" ({shutil.disk_usage(out.parent).free / 2**30:.1f} GiB free now)"
    except OSError:
        free = ""
    return L2VError(f"disk full while writing {what} {out}{free}; nothing was written", where=str(out.parent),
                    fix="free space on that disk (or choose a path on another disk), then rerun")


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


def _remove_orphans(out: Path) -> None:
    """Temp folders of writers that were killed (kill -9 leaves them): their pid is gone."""
    for p in out.parent.glob(f".{out.name}.tmp-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            _remove(p)


def _fresh_tmp(out: Path) -> Path:
    """An empty hidden sibling of `out` for this process, after clearing killed writers' leftovers."""
    _remove_orphans(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    _remove(tmp)  # a leftover from a crashed run with the same pid
    tmp.mkdir()
    return tmp


@contextlib.contextmanager
def atomic_dir(out: str | Path, overwrite: bool = False, what: str = "OUT") -> Iterator[Path]:
    """Yield a fresh temp folder; on success it becomes `out`, on failure it is removed.

    Refuses an existing `out` (L2VError) unless `overwrite`. `what` names the option in messages.
    """
    out = Path(out).expanduser().absolute()
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise L2VError(f"{what} {out} already exists", where=str(out),
                           fix="pass --overwrite to replace it, or choose another path")
        if not out.is_dir():
            raise L2VError(f"{what} {out} exists and is not a folder; refusing to replace it",
                           where=str(out), fix="remove it yourself or choose another path")
    check_writable_parent(out, what)
    tmp = _fresh_tmp(out)
    try:
        yield tmp
        _normal_permissions(tmp)
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            _remove(old)
            os.replace(out, old)
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(old, out)  # put the previous OUT back
                raise
            _remove(old)
        else:
            os.replace(tmp, out)
    except BaseException as e:
        _remove(tmp)
        if _is_disk_full(e):
            raise _disk_full(out, what) from e
        raise


@contextlib.contextmanager
def atomic_cache_dir(target: str | Path, what: str = "the l2v cache (set L2V_CACHE to move it)") -> Iterator[Path]:
    """Like `atomic_dir` for cache slots: a stale `target` is replaced, and if another process
    publishes the same slot first, its copy is kept and ours dropped (both are equivalent)."""
    target = Path(target).expanduser().absolute()
    check_writable_parent(target, what)
    tmp = _fresh_tmp(target)
    try:
        yield tmp
        _normal_permissions(tmp)
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            _remove(old)
            try:
                os.replace(target, old)
            except OSError:
                pass
            _remove(old)
        try:
            os.replace(tmp, target)
        except OSError:
            if not target.is_dir():  # not a lost race: a real failure
                raise
    except OSError as e:
        if _is_disk_full(e):
            _remove(tmp)
            raise _disk_full(target, what) from e
        raise
    finally:
        _remove(tmp)
