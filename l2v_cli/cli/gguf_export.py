"""`l2v export ... --format gguf|st,gguf`: the GGUF branch of the export command (see l2v_cli/gguf/)."""

from __future__ import annotations

from pathlib import Path

import typer


def export_gguf_command(source: Path, out: Path, *, fmt: str, gguf_type: str, allow_causal: bool, pooling: str,
                        normalize: bool, query_instruction, document_instruction, overwrite: bool, **st_kwargs) -> None:
    from l2v_cli.stages.export.gguf_files import check_formats, check_types, export_gguf
    from l2v_cli.gguf.writer import check_gguf_pooling

    formats = check_formats(fmt)
    types = check_types(gguf_type)
    check_gguf_pooling(pooling)
    rep = export_gguf(source, out, formats=formats, gguf_types=types, pooling=pooling, allow_causal=allow_causal,
                      overwrite=overwrite, query_instruction=query_instruction,
                      document_instruction=document_instruction, normalize=normalize, **st_kwargs)
    for info in rep.files:
        typer.echo(f"wrote {info.path}  ({info.arch}, {info.gguf_type}, {info.bytes / 2**20:.1f} MB, pooling="
                   f"{info.pooling}, {'causal' if info.causal else 'non-causal'}; tokenization: "
                   f"{rep.token_check.get(info.path.name)})", err=True)
    if "st" in rep.formats:
        typer.echo(f"wrote {rep.out} (sentence-transformers folder with the GGUF inside)", err=True)
    first = rep.files[0]
    from l2v_cli.gguf.llamacpp import SERVED_POOLING

    typer.echo(f"serve it: llama-server -m {first.path} --embeddings --pooling {SERVED_POOLING[first.pooling]}",
               err=True)
    if first.sink_ids:
        what = "BOS, then the attention sink" if first.add_bos else "the attention sink"
        end = "".join(f", {i}" for i in first.suffix_ids)
        typer.echo(f"send each text after the token ids {first.prefix_ids} ({what}): "
                   "{\"input\": [[" + ", ".join(map(str, first.prefix_ids)) + ", \"a text\"" + end + "]]} (README.md)",
                   err=True)
