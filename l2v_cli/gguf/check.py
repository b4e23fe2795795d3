"""Measure a GGUF against the model folder it came from: llama.cpp vs `l2v encode` (the Encoder).

    compare_embeddings("runs/x/final", "runs/x/final/final-q8_0.gguf", texts)
    -> {"served_text": {"mean_cos": .., "min_cos": ..}, "served_ids": {...}, "exact": {...}, "n": 50}

served_text  llama.cpp tokenizes the string and pools (llama-server for a plain string): no
             attention sink; with an instruction the instruction is prepended and pooled too.
served_ids   llama.cpp pools over the ids `l2v encode` uses: BOS + the file's sink ids + the
             (instruction +) text's ids (llama-server for a token-id prompt).
exact        `GGUFEncoder`: llama.cpp's per-token states, pooled over the text positions by us.
Reference: `Encoder.from_pretrained(folder, dtype="float32")`, as `l2v encode` runs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def _stats(c: np.ndarray) -> dict:
    return {"mean_cos": round(float(c.mean()), 6), "min_cos": round(float(c.min()), 6)}


def reference_embeddings(folder: str | Path, texts: Sequence[str], *, pooling: str = "mean",
                         instruction: str | None = None) -> np.ndarray:
    from l2v_cli.encoding.encoder import Encoder

    enc = Encoder.from_pretrained(str(folder), pooling=pooling, dtype="float32")
    return enc.encode(list(texts), instruction=instruction, batch_size=16)


def compare_embeddings(folder: str | Path, gguf_path: str | Path, texts: Sequence[str], *, pooling: str = "mean",
                       instruction: str | None = None, n_threads: int | None = None,
                       reference: np.ndarray | None = None) -> dict:
    from l2v_cli.gguf.llamacpp import SERVED_POOLING, GGUFEncoder, LlamaCppModel

    texts = list(texts)
    ref = reference if reference is not None else reference_embeddings(folder, texts, pooling=pooling,
                                                                       instruction=instruction)
    served_model = LlamaCppModel(gguf_path, pooling=SERVED_POOLING[pooling], n_threads=n_threads)
    try:
        full = [(instruction or "") + t for t in texts]
        served_text = served_model.embed(full)
        served_ids = served_model.pooled([served_model.l2v_tokenize(t) for t in full])
    finally:
        served_model.close()
    exact_enc = GGUFEncoder(gguf_path, pooling=pooling, n_threads=n_threads)
    try:
        exact = exact_enc.encode(texts, instruction=instruction)
    finally:
        exact_enc.model.close()
    return {"n": len(texts), "served_text": _stats(cosine_rows(served_text, ref)),
            "served_ids": _stats(cosine_rows(served_ids, ref)), "exact": _stats(cosine_rows(exact, ref))}
