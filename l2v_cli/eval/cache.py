"""Embedding cache: a rerun of `l2v eval` (same model, settings and texts) encodes nothing.

One `.npy` file per encode call, under `$L2V_CACHE/embeddings/` (default
`~/.cache/l2v/embeddings/`), named by a SHA-256 of everything that determines the vectors:

  model fingerprint   SHA-256 of the bytes of the files that decide the vectors: config.json,
                      every *.safetensors, the tokenizer files (or of the .gguf file). Content,
                      not location: the same weights in another folder (the causal baseline of
                      every run of one model) share entries; retraining in place gives a new key.
                      A file's digest is memoised under `digests/` by (real path, size, mtime,
                      inode), so a large model is read once, not at every evaluation.
  pooling, dtype, max_length, attention mode (bidirectional or causal, as actually loaded)
  instruction         the exact prefix string, or none
  texts               SHA-256 of the texts, in order

Embeddings are stored unnormalised (float32); files are written to a temp name in the same
folder and renamed, so a crash or a parallel run never leaves a half-written entry. An unreadable
or mis-shaped entry counts as a miss and is rewritten. An Encoder built in Python without a
model folder (`Encoder(model, tokenizer)`) has no fingerprint and is never cached.
Delete the folder to clear the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Sequence

import numpy as np

CACHE_VERSION = 2  # 2: content fingerprints


def cache_dir() -> Path:
    from l2v_cli.modeling.aliases import cache_root

    return cache_root() / "embeddings"


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> bool:
    """`write(f)` into a temp file beside PATH, then rename it onto PATH: a crash or a parallel
    writer never leaves a half-written file. False (and no temp file left) where the folder
    cannot be written: a cache that cannot be written is skipped, never fatal."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    except OSError:
        return False
    return True


MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt")


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, memoised under the cache by (real path, size, mtime, inode):
    unchanged files are hashed once. A memo that cannot be read or written is skipped."""
    path = Path(path).resolve()
    st = path.stat()
    stamp = hashlib.sha256(f"{path}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}".encode()).hexdigest()[:32]
    memo = cache_dir() / "digests" / stamp
    try:
        known = memo.read_text().strip()
        if len(known) == 64:
            return known
    except OSError:
        pass
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    digest = h.hexdigest()
    write_atomic(memo, lambda f: f.write(digest.encode()))
    return digest


def model_fingerprint(path: str | Path | None) -> str | None:
    """A short hash of the content of a model folder's weight, config and tokenizer files (or of
    a single model file, e.g. a .gguf); None (no caching) without one, or for a folder with no
    *.safetensors (nothing to tell its weights apart by)."""
    if path is None:
        return None
    p = Path(path).expanduser()
    if p.is_file():
        files = [p]
    elif p.is_dir() and any(p.glob("*.safetensors")):
        files = sorted({*(p / n for n in MODEL_FILES), *p.glob("*.safetensors")})
    else:
        return None
    named = p.is_dir()  # a folder: each digest under its file name
    parts = []
    for f in files:
        try:
            parts.append(f"{f.name}:{file_digest(f)}" if named else file_digest(f))
        except OSError:  # absent (most tokenizer files are optional)
            continue
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def texts_hash(texts: Iterable[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def encoder_settings(encoder) -> dict:
    """What, besides the texts and instruction, decides an Encoder's vectors."""
    from l2v_cli.modeling.bidir import is_bidirectional_config

    if hasattr(encoder, "settings_for_cache"):  # an encoder that is not a torch model (GGUFEncoder)
        return encoder.settings_for_cache()
    cfg = getattr(getattr(encoder, "_backbone", None), "config", None) or getattr(encoder.model, "config", None)
    out = {
        "model": model_fingerprint(getattr(encoder, "path", None)),
        "pooling": encoder.pooling,
        "dtype": str(encoder.dtype).replace("torch.", ""),
        "max_length": encoder.max_length,
        "bidirectional": bool(cfg is not None and is_bidirectional_config(cfg)),
    }
    scale = getattr(encoder, "dim_scale", None)
    if scale is not None:  # only then: the keys of models without one stay as they were
        out["dim_scale"] = hashlib.sha256(scale.float().numpy().tobytes()).hexdigest()[:16]
    return out


class EmbeddingCache:
    """Get/put float32 matrices by key, atomically, in one folder."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else cache_dir()

    @staticmethod
    def key(settings: dict, instruction: str | None, texts: Sequence[str]) -> str:
        blob = json.dumps({"v": CACHE_VERSION, **settings, "instruction": instruction or "",
                           "texts": texts_hash(texts), "n": len(texts)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def path(self, key: str, model: str | None) -> Path:
        return self.root / (model or "unknown") / f"{key[:32]}.npy"

    def get(self, key: str, model: str | None, n: int) -> np.ndarray | None:
        p = self.path(key, model)
        try:
            arr = np.load(p, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        if arr.ndim != 2 or arr.shape[0] != n or arr.dtype != np.float32:
            return None
        return arr

    def put(self, key: str, model: str | None, arr: np.ndarray) -> Path | None:
        """Write atomically; a cache that cannot be written is skipped, never fatal."""
        p = self.path(key, model)
        ok = write_atomic(p, lambda f: np.save(f, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False))
        return p if ok else None


class CachedEncoder:
    """Wraps an `Encoder` with the embedding cache; same `encode` call, plus counters.

    `encoded` counts texts actually run through the model, `cached` texts served from disk.
    `normalize` is applied after the cache, so normalised and raw calls share an entry.
    """

    def __init__(self, encoder, cache: bool = True, batch_size: int = 32, root: str | Path | None = None,
                 show_progress: bool = False):
        self.encoder = encoder
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.settings = encoder_settings(encoder)
        self.store = EmbeddingCache(root) if cache and self.settings["model"] else None
        self.encoded = 0
        self.cached = 0

    def encode(self, texts: Sequence[str], instruction: str | None = None, batch_size: int | None = None,
               normalize: bool = False, **_) -> np.ndarray:
        texts = list(texts)
        emb = None
        key = None
        if self.store is not None and texts:
            key = self.store.key(self.settings, instruction, texts)
            emb = self.store.get(key, self.settings["model"], len(texts))
        if emb is not None:
            self.cached += len(texts)
        else:
            emb = self.encoder.encode(texts, instruction=instruction, batch_size=batch_size or self.batch_size,
                                      show_progress=self.show_progress)
            self.encoded += len(texts)
            if key is not None:
                self.store.put(key, self.settings["model"], emb)
        if normalize:
            emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return emb

    def __getattr__(self, name):  # dim, name, pooling, ... of the wrapped encoder
        return getattr(self.encoder, name)
