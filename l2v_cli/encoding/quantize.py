"""Quantized embeddings: the storage precisions of `l2v encode --precision` and `l2v eval --precision`.

    float32   4 bytes a number          float16   2 bytes
    int8      1 byte, per-dimension buckets: (x - min_d) / (max_d - min_d) * 255 - 128
    uint8     the same buckets + 128 (what FAISS's scalar quantizer stores)
    binary    1 bit (x > 0), 8 to a byte, stored as int8 (packed bits - 128)
    ubinary   the same bits stored as uint8

The quantizer is sentence-transformers' own `quantize_embeddings` (float16 is a cast). int8 and
uint8 need per-dimension ranges, a (2, D) array of [min; max]: computed from calibration
embeddings (the corpus you store, or a calibration file), and the SAME ranges must quantize
queries and documents — `l2v encode` writes them beside the output (`OUT.ranges.npy`) and takes
them back with `--calibration OUT.ranges.npy`.

Similarity on quantized vectors (what `l2v eval` scores, as search engines do): cosine on the
stored integers for int8 (uint8 scores as its int8 twin, the values minus 128), and Hamming
distance for binary/ubinary (cosine of ±1 vectors, 1 − 2·hamming/D, ranks the same).
A precision may name a rescoring representation after a '+': `binary+int8` searches the binary
vectors (Hamming), then rescores the best `rescore_multiplier × k` candidates with the float
query against the documents' int8 vectors (dequantized), as sentence-transformers'
`semantic_search_*` does; `binary+binary` rescores against the documents' bits.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from l2v_cli.errors import L2VError, did_you_mean

__all__ = ["PRECISIONS", "RESCORE", "Precision", "parse_precision", "parse_precisions", "bytes_per_vector",
           "calibration_ranges", "check_ranges", "load_ranges", "quantize", "scoring_vectors", "dequantize"]

PRECISIONS = ("float32", "float16", "int8", "uint8", "binary", "ubinary")
RESCORE = ("int8", "binary")   # document representations a rescoring step may read
_BITS = {"float32": 32, "float16": 16, "int8": 8, "uint8": 8, "binary": 1, "ubinary": 1}


class Precision(NamedTuple):
    store: str                 # how vectors are stored and searched
    rescore: str | None = None  # the documents' representation the float query rescores (or None)

    def __str__(self) -> str:
        return self.store + (f"+{self.rescore}" if self.rescore else "")


def parse_precision(spec: str, where: str = "--precision") -> Precision:
    """'int8' -> Precision('int8'); 'binary+int8' -> Precision('binary', 'int8')."""
    store, plus, rescore = str(spec).strip().lower().partition("+")
    if store not in PRECISIONS:
        raise L2VError(f"unknown precision {store!r}", where=where,
                       fix=did_you_mean(store, PRECISIONS) + " (or P+int8 / P+binary to rescore)")
    if not plus:
        return Precision(store)
    if rescore not in RESCORE:
        raise L2VError(f"unknown rescoring representation {rescore!r} in {spec!r}", where=where,
                       fix="rescore with int8 or binary document vectors, e.g. binary+int8")
    if store.startswith("float"):
        raise L2VError(f"{spec!r}: rescoring applies to a quantized search, not {store}", where=where,
                       fix="use e.g. binary+int8, or plain " + store)
    return Precision(store, rescore)


def parse_precisions(spec: str | Sequence[str], where: str = "--precision") -> list[Precision]:
    items = [s for s in (spec.split(",") if isinstance(spec, str) else spec) if str(s).strip()]
    if not items:
        raise L2VError("no precision given", where=where, fix="e.g. --precision float32,int8,binary")
    out = [parse_precision(s, where) for s in items]
    dup = next((p for i, p in enumerate(out) if p in out[:i]), None)
    if dup:
        raise L2VError(f"precision {dup} is listed twice", where=where, fix="list each precision once")
    return out


def bytes_per_vector(dim: int, precision: Precision | str) -> int:
    """Bytes one stored vector takes (binary: ceil(dim / 8))."""
    store = precision.store if isinstance(precision, Precision) else precision
    return math.ceil(dim * _BITS[store] / 8)


def calibration_ranges(emb: np.ndarray) -> np.ndarray:
    """(2, D) float32 [per-dimension min; max] of calibration embeddings."""
    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2 or len(emb) < 2:
        raise L2VError(f"int8 calibration needs at least 2 embeddings, got shape {emb.shape}",
                       where="--calibration", fix="calibrate on more texts (e.g. the corpus you store)")
    return np.stack([emb.min(0), emb.max(0)]).astype(np.float32)


def check_ranges(ranges: np.ndarray, dim: int, where: str) -> np.ndarray:
    ranges = np.asarray(ranges)
    if ranges.ndim != 2 or ranges.shape[0] != 2:
        raise L2VError(f"calibration ranges must have shape (2, D) (min row, max row), got {ranges.shape}",
                       where=where, fix="pass the OUT.ranges.npy that `l2v encode --precision int8` wrote")
    if ranges.shape[1] != dim:
        raise L2VError(f"calibration ranges are {ranges.shape[1]} wide but the embeddings are {dim} wide",
                       where=where, fix=f"use ranges written for the same model and --dim {dim}")
    if not np.all(np.isfinite(ranges)) or np.any(ranges[0] > ranges[1]):
        raise L2VError("calibration ranges hold non-finite values or a min above its max", where=where,
                       fix="recompute them from embeddings (`l2v encode --precision int8`)")
    return ranges.astype(np.float32)


def load_ranges(path: str | Path, dim: int) -> np.ndarray:
    """Ranges from an .npy file, checked against the embedding width."""
    try:
        arr = np.load(Path(path), allow_pickle=False)
    except FileNotFoundError:
        raise L2VError(f"calibration file {str(path)!r} does not exist", where="--calibration",
                       fix="check the path") from None
    except (OSError, ValueError) as e:
        raise L2VError(f"cannot read calibration file {str(path)!r} as .npy: {e}", where="--calibration",
                       fix="pass OUT.ranges.npy from `l2v encode --precision int8`, or a text file") from None
    return check_ranges(arr, dim, f"--calibration {path}")


def quantize(emb: np.ndarray, precision: Precision | str, ranges: np.ndarray | None = None) -> np.ndarray:
    """Embeddings as stored at `precision` (float32 / float16 / int8 / uint8 / packed bits)."""
    store = precision.store if isinstance(precision, Precision) else precision
    emb = np.asarray(emb, dtype=np.float32)
    if store == "float32":
        return emb
    if store == "float16":
        return emb.astype(np.float16)
    if store in ("int8", "uint8") and ranges is None:
        raise ValueError("quantize: int8/uint8 need calibration ranges (calibration_ranges(...))")
    from sentence_transformers import quantize_embeddings  # heavy import: only when quantizing

    return quantize_embeddings(emb, precision=store, ranges=ranges)


def scoring_vectors(stored: np.ndarray, precision: Precision | str, dim: int) -> np.ndarray:
    """float32 vectors whose cosine is the similarity a search over `stored` computes (module doc)."""
    store = precision.store if isinstance(precision, Precision) else precision
    if store in ("float32", "float16", "int8"):
        return np.asarray(stored, dtype=np.float32)
    if store == "uint8":
        return np.asarray(stored, dtype=np.float32) - 128.0
    return 2.0 * _bits(stored, store, dim) - 1.0  # ±1: cosine = 1 - 2 * hamming / dim


def dequantize(stored: np.ndarray, precision: Precision | str, ranges: np.ndarray | None, dim: int) -> np.ndarray:
    """float32 approximations of the original vectors: bucket centres (int8/uint8), the bits as
    0/1 (binary, as sentence-transformers rescores them), the values (float)."""
    store = precision.store if isinstance(precision, Precision) else precision
    if store in ("int8", "uint8"):
        q = np.asarray(stored, dtype=np.float32) + (128.0 if store == "int8" else 0.0)
        step = (ranges[1] - ranges[0]) / 255
        return ranges[0] + (q + 0.5) * np.where(step == 0, 1, step)
    if store in ("binary", "ubinary"):
        return _bits(stored, store, dim)
    return np.asarray(stored, dtype=np.float32)


def _bits(stored: np.ndarray, store: str, dim: int) -> np.ndarray:
    packed = (np.asarray(stored).astype(np.int16) + 128).astype(np.uint8) if store == "binary" \
        else np.asarray(stored, dtype=np.uint8)
    return np.unpackbits(packed, axis=-1)[..., :dim].astype(np.float32)
