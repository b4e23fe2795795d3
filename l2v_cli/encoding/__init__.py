"""Text encoding: pooling of hidden states and the `Encoder` (the Python API behind `l2v encode`).

    from l2v_cli.encoding import Encoder
    enc = Encoder.from_pretrained("path/to/model", pooling="mean")
    emb = enc.encode(["a sentence", "another"], normalize=True)   # np.ndarray float32 (2, D)

This package module stays light (no torch import) so the CLI can validate options before loading
anything heavy; `Encoder` and `pool` are imported on first use.
"""

from __future__ import annotations

from l2v_cli.encoding.methods import POOLING_METHODS, check_pooling

__all__ = ["POOLING_METHODS", "Encoder", "pool", "check_pooling", "as_prefix"]


def as_prefix(instruction: str | None) -> str | None:
    """'Do X' -> 'Do X:\n', the instruction as the Encoder's prefix (attended to, not pooled): the
    one spelling used by evaluation, supervised training and mining. It ends in a newline because
    no tokenizer merges a newline into the next word, so instruction + text tokenises at an exact
    boundary and every token of the text is pooled (after ": " a byte-level BPE or SentencePiece
    tokenizer glues the space to the text's first word, which a prompt-length count then drops)."""
    if not instruction:
        return None
    return instruction.strip().rstrip(".:").rstrip() + ":\n"


def __getattr__(name: str):
    if name == "Encoder":
        from l2v_cli.encoding.encoder import Encoder

        return Encoder
    if name == "pool":
        from l2v_cli.encoding.pooling import pool

        return pool
    raise AttributeError(f"module 'l2v_cli.encoding' has no attribute {name!r}")
