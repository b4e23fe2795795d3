"""`l2v mine MODEL --data PAIRS -o OUT`: hard negatives mined with a converted model (E5 layout out)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def mine_command(
    model: str = typer.Argument(..., help="A converted (bidirectional) encoder: an export folder, a "
                                "bidirectional model folder, alias or hub id."),
    data: str = typer.Option(..., "--data", help="(query, positive[, negative]) pairs: an E5 folder (one jsonl per "
                             "data set, instructions.json), a jsonl/csv/parquet file, or a hub dataset."),
    out: Path = typer.Option(..., "-o", "--out", "--output", help="Folder to write in the E5 layout that "
                             "train-supervised reads (must not exist unless --overwrite)."),
    corpus: Optional[str] = typer.Option(None, "--corpus", help="Texts to mine from (txt/jsonl/csv/parquet; "
                                         "default: each data set's own positives)."),
    negatives: int = typer.Option(1, "--negatives", min=1, help="Negatives per query (one output row each)."),
    rank_range: str = typer.Option("10:100", "--range", help="LO:HI — sample from candidate ranks LO..HI-1 "
                                   "(0 = the best candidate that is not the positive)."),
    max_score_ratio: float = typer.Option(0.95, "--max-score-ratio", help="False-negative guard: drop candidates "
                                          "scoring above this fraction of the positive's score."),
    seed: int = typer.Option(42, "--seed", help="Seed of the negative sampling."),
    chunk_size: int = typer.Option(4096, "--chunk-size", min=1, help="Texts per encode/search chunk (memory bound)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Texts per forward pass."),
    max_length: int = typer.Option(512, "--max-length", min=1, help="Tokens per text, instruction included."),
    pooling: str = typer.Option("mean", "--pooling", "-p", help="mean | weighted_mean | last_token | eos | bos."),
    dtype: str = typer.Option("auto", "--dtype", help="auto | bfloat16 | float16 | float32."),
    max_samples: Optional[int] = typer.Option(None, "--max-samples", min=1, help="At most N pairs per data set."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Reuse cached embeddings (a rerun encodes nothing)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists (once the new one is complete)."),
    allow_causal: bool = typer.Option(False, "--allow-causal", help="Mine with a causal (unconverted) model anyway."),
) -> None:
    """Mine hard negatives for (query, positive) pairs with MODEL, guarding against false negatives."""
    from rich.console import Console

    from l2v_cli.encoding import check_pooling
    from l2v_cli.mine.run import mine, parse_range
    from l2v_cli.utils.device import resolve_dtype

    check_pooling(pooling)
    resolve_dtype(dtype)
    lo_hi = parse_range(rank_range)
    err = Console(stderr=True, highlight=False)
    stats = mine(model, data, out, corpus=corpus, negatives=negatives, rank_range=lo_hi,
                 max_score_ratio=max_score_ratio, seed=seed, chunk_size=chunk_size, batch_size=batch_size,
                 max_length=max_length, pooling=pooling, dtype=dtype, max_samples=max_samples, cache=cache,
                 overwrite=overwrite, allow_causal=allow_causal, show_progress=err.is_terminal,
                 echo=lambda m: err.print(m, soft_wrap=True))
    rows = sum(s["rows"] for s in stats["sets"].values())
    err.print(f"wrote {out}  ({rows:,} rows in {len(stats['sets'])} data set(s); statistics in "
              f"{Path(out) / 'mining.json'})", soft_wrap=True)


def register(app) -> None:
    app.command("mine", no_args_is_help=True)(mine_command)
