"""`l2v export SOURCE -o OUT`: merge a trained chain into one sentence-transformers / transformers folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def export_command(
    source: Path = typer.Argument(..., metavar="SOURCE", help="A finished training-stage folder, a checkpoint "
                                  "(STAGE/step-NNNNNN) or a bidirectional model folder (from `l2v enable-bidir`)."),
    out: Path = typer.Option(..., "-o", "--out", "--output", help="Folder to write (must not exist unless --overwrite)."),
    dtype: str = typer.Option("float32", "--dtype", help="Weight dtype on disk: float32, bfloat16 or float16."),
    pooling: str = typer.Option("mean", "--pooling", "-p", help="mean | weighted_mean | last_token | eos | bos "
                                "(written to the sentence-transformers Pooling config)."),
    normalize: bool = typer.Option(False, "--normalize", help="Add a Normalize module (unit-length embeddings)."),
    query_instruction: Optional[str] = typer.Option(None, "--query-instruction", help="Prompt for queries "
                                                    "(sentence-transformers prompt_name='query'); attended to, not pooled."),
    document_instruction: Optional[str] = typer.Option(None, "--document-instruction", help="Prompt for documents "
                                                       "(default: none)."),
    max_shard_size: str = typer.Option("5GB", "--max-shard-size", help="Largest safetensors shard, e.g. 5GB, 500MB."),
    max_seq_length: int = typer.Option(512, "--max-seq-length", min=1, help="sentence-transformers max_seq_length."),
    stage_input: Optional[Path] = typer.Option(None, "--stage-input", help="For a checkpoint of an unfinished stage: "
                                               "the INPUT that stage was trained from."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Reload OUT with plain transformers and probe "
                                "that it is bidirectional (default on)."),
    calibration: Optional[str] = typer.Option(None, "--calibration", help="A file of ordinary texts: scale each "
                                              "embedding dimension by 1/its standard deviation over a sample of "
                                              "them (a Dense module before Normalize; see docs/quality.md)."),
    calibration_samples: int = typer.Option(2000, "--calibration-samples", min=2, help="Texts drawn from --calibration."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists (only once the new one is complete)."),
    fmt: str = typer.Option("st", "--format", help="st (sentence-transformers folder), gguf (llama.cpp), or "
                            "st,gguf (both in OUT). See docs/gguf.md."),
    gguf_type: str = typer.Option("f16", "--gguf-type", help="GGUF weights: f32 | f16 | bf16 | q8_0 "
                                  "(comma-separated for several files)."),
    allow_causal: bool = typer.Option(False, "--allow-causal", help="GGUF: export a causal model folder as it is "
                                      "(by default only bidirectional models are exported)."),
) -> None:
    """Merge SOURCE's adapter chain into the weights and write a sentence-transformers model folder."""
    from l2v_cli.encoding import check_pooling

    check_pooling(pooling)  # before anything heavy is imported
    if fmt.replace(" ", "") != "st":
        from l2v_cli.cli.gguf_export import export_gguf_command

        return export_gguf_command(source, out, fmt=fmt, gguf_type=gguf_type, allow_causal=allow_causal,
                                   pooling=pooling, normalize=normalize, query_instruction=query_instruction,
                                   document_instruction=document_instruction, overwrite=overwrite, dtype=dtype,
                                   max_shard_size=max_shard_size, max_seq_length=max_seq_length,
                                   stage_input=stage_input, verify=verify, calibration=calibration,
                                   calibration_samples=calibration_samples)
    from l2v_cli.stages.export import export

    rep = export(source, out, dtype=dtype, pooling=pooling, normalize=normalize, max_shard_size=max_shard_size,
                 query_instruction=query_instruction, document_instruction=document_instruction,
                 overwrite=overwrite, max_seq_length=max_seq_length, stage_input=stage_input, verify=verify,
                 report=True, calibration=calibration, calibration_samples=calibration_samples)
    n = len(rep.chain.adapters)
    typer.echo(f"wrote {rep.out}  ({rep.source_kind}: base {rep.chain.base_model} + {n} adapter"
               f"{'' if n == 1 else 's'} merged; pooling={rep.pooling}, normalize={rep.normalize}, "
               f"dtype={rep.dtype}{', verified bidirectional' if rep.verified else ''}) in {rep.seconds:.1f}s",
               err=True)
    typer.echo(f"load it: SentenceTransformer({str(rep.out)!r})", err=True)


def register(app) -> None:
    from l2v_cli.stages import registry

    app.command(registry.EXPORT.name, help="Merge a trained chain into a sentence-transformers / transformers model folder.")(
        export_command)
