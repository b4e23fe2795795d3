"""`l2v encode MODEL --input FILE --output OUT.npy`: embed a file of texts into a .npy matrix.

FILE is `.txt` (one text per line; row i of the output is line i+1, a blank line is an empty
text) or `.jsonl` (one JSON object with a string `text` per non-blank line). Everything the user
can get wrong is checked before the model is loaded, and reported as one line naming the file
and line. The output is written atomically (temp file in the same folder, then os.replace).

`--dim N` keeps the first N numbers of each embedding (a Matryoshka prefix; `--normalize` then
normalises the prefix). `--precision` stores the vectors quantized (encoding/quantize.py); for
int8/uint8 the per-dimension ranges used are written beside the output as OUT.ranges.npy —
computed from the output itself, or from `--calibration` (a .txt/.jsonl of texts encoded the same
way, or a ranges .npy written earlier, e.g. the corpus's, so queries share its buckets).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

import typer

from l2v_cli.errors import L2VError

INPUT_SUFFIXES = {".txt": "txt", ".text": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def _decode_lines(path: Path) -> list[str]:
    """The file's lines as str; a line that is not UTF-8 is an error naming its number."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise L2VError(f"input file {str(path)!r} does not exist", where="--input",
                       fix="check the path") from None
    except IsADirectoryError:
        raise L2VError(f"input {str(path)!r} is a directory, not a file", where="--input",
                       fix="give a .txt or .jsonl file") from None
    except OSError as e:
        raise L2VError(f"cannot read input file {str(path)!r}: {e.strerror}", where="--input") from None
    raw = data.split(b"\n")
    if raw and raw[-1] == b"":
        raw.pop()  # the newline that ends the last line does not start another
    lines = []
    for n, b in enumerate(raw, start=1):
        if b.endswith(b"\r"):
            b = b[:-1]
        try:
            lines.append(b.decode("utf-8-sig" if n == 1 else "utf-8"))
        except UnicodeDecodeError as e:
            raise L2VError(f"line {n} is not valid UTF-8 (byte 0x{b[e.start]:02x} at column {e.start + 1})",
                           where=f"{path}:{n}",
                           fix="re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8`") from None
    return lines


def read_texts(path: str | Path) -> list[str]:
    """Read texts from a .txt (one per line) or .jsonl (`text` key) file, strictly."""
    path = Path(path)
    kind = INPUT_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise L2VError(f"unsupported input file type {path.suffix or '(none)'!r}", where=str(path),
                       fix="use a .txt file (one text per line) or a .jsonl file with a 'text' key")
    lines = _decode_lines(path)
    if not any(line.strip() for line in lines):
        raise L2VError(f"input file {str(path)!r} is empty (no texts)", where="--input",
                       fix="put one text per line (.txt) or one {\"text\": ...} object per line (.jsonl)")
    if kind == "txt":
        return lines
    from l2v_cli.data.jsonl import parse_jsonl

    return [obj["text"] for _, obj in parse_jsonl(lines, path, {"text": (str,)})]


def _open_output(output: Path):
    """Check OUT early and return an open temp file beside it (renamed onto OUT at the end)."""
    if output.suffix != ".npy":
        raise L2VError(f"output {str(output)!r} must end in .npy", where="--output",
                       fix=f"use e.g. --output {output.with_suffix('.npy')}")
    if output.is_dir():
        raise L2VError(f"output {str(output)!r} is a directory", where="--output", fix="give a file name ending in .npy")
    folder = output.parent
    blocker = next((p for p in [folder, *folder.parents] if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise L2VError(f"cannot write {str(output)!r}: {str(blocker)!r} is a file, not a folder",
                       where="--output", fix="choose a writable location")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return tempfile.NamedTemporaryFile(dir=folder, prefix=f".{output.name}.", suffix=".tmp", delete=False)
    except OSError as e:
        raise L2VError(f"cannot write to output folder {str(folder)!r}: {e.strerror or e}", where="--output",
                       fix="choose a writable location") from None


def encode_command(
    model: str = typer.Argument(..., help="Model: folder, .gguf, alias (`l2v models`), hub id or tiny-<arch>."),
    input: Path = typer.Option(..., "--input", "-i", help="Texts: .txt (one per line) or .jsonl (a 'text' key per line)."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the (N, D) float32 matrix (.npy)."),
    pooling: str = typer.Option("mean", "--pooling", "-p", help="mean | weighted_mean | last_token | eos | bos."),
    instruction: Optional[str] = typer.Option(None, "--instruction", help="Prefix attended to but not pooled, e.g. 'Retrieve similar text: '."),
    normalize: bool = typer.Option(False, "--normalize", help="Scale each embedding to unit length."),
    max_length: int = typer.Option(512, "--max-length", min=1, help="Tokens per text, instruction included (the text is truncated)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Texts per forward pass."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (fp32 on CPU, bf16 on a GPU) | bfloat16 | float16 | float32."),
    attn_implementation: str = typer.Option("sdpa", "--attn-implementation", help="sdpa | eager | flash_attention_2 | auto."),
    bidirectional: Optional[bool] = typer.Option(None, "--bidirectional/--causal", help="Force the attention mode (default: as saved in the model's config)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow model code from the model folder/hub repo."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow pickle (.bin) weights; only for sources you trust."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar (stderr)."),
    dim: Optional[int] = typer.Option(None, "--dim", help="Keep the first N numbers of each embedding (a Matryoshka "
                                      "width; default: all)."),
    precision: str = typer.Option("float32", "--precision", help="float32 | float16 | int8 | uint8 | binary | "
                                  "ubinary (sentence-transformers' quantizer; bits are packed 8 to a byte)."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="int8/uint8: ranges from these texts "
                                               "(.txt/.jsonl) or a ranges .npy (e.g. OUT.ranges.npy of the corpus); "
                                               "default: from the output itself."),
) -> None:
    """Embed every text in FILE with MODEL and save the matrix as a .npy file."""
    from l2v_cli.encoding import check_pooling
    from l2v_cli.encoding.quantize import parse_precision

    check_pooling(pooling)
    prec = parse_precision(precision)
    if prec.rescore:
        raise L2VError(f"--precision {prec} names a rescoring step, which belongs to a search",
                       where="--precision", fix=f"store --precision {prec.store} (and int8 vectors for rescoring); "
                       "`l2v eval --precision` scores P+R searches")
    if calibration is not None and prec.store not in ("int8", "uint8"):
        raise L2VError(f"--calibration sets int8/uint8 ranges; --precision {prec} has none", where="--calibration",
                       fix="drop --calibration, or use --precision int8")
    if dim is not None and dim < 1:
        raise L2VError(f"--dim must be a positive whole number, got {dim}", where="--dim", fix="e.g. --dim 256")
    texts = read_texts(input)
    cal_texts = read_texts(calibration) if calibration is not None and calibration.suffix.lower() != ".npy" else None
    tmp = _open_output(output)
    try:
        import time

        import numpy as np
        from rich.console import Console

        from l2v_cli.encoding.dims import trained_dims_of
        from l2v_cli.encoding.encoder import Encoder
        from l2v_cli.utils.device import resolve_dtype

        resolve_dtype(dtype)  # unknown names fail before the weights load
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except Exception:
            pass
        console = Console(stderr=True)
        t_load = time.perf_counter()
        if allow_pickle:  # Encoder.from_pretrained always refuses pickle weights
            from l2v_cli.modeling.loading import load_model

            loaded = load_model(model, dtype=dtype, attn_implementation=attn_implementation,
                                bidirectional=bidirectional, lm_head=False,
                                trust_remote_code=trust_remote_code, allow_pickle=True)
            enc = Encoder(loaded.model, loaded.tokenizer, pooling=pooling, max_length=max_length, name=loaded.name)
            enc.trained_dims = trained_dims_of(loaded.path)
        else:
            enc = Encoder.from_pretrained(model, pooling=pooling, dtype=dtype, max_length=max_length,
                                          attn_implementation=attn_implementation, bidirectional=bidirectional,
                                          trust_remote_code=trust_remote_code)
        t_load = time.perf_counter() - t_load
        width = enc.check_dim(dim, "--dim")
        ranges = None
        if calibration is not None and cal_texts is None:  # a ranges .npy: check its width first
            from l2v_cli.encoding.quantize import load_ranges

            ranges = load_ranges(calibration, width)
        t0 = time.perf_counter()
        emb = enc.encode(texts, instruction=instruction, batch_size=batch_size, normalize=normalize,
                         show_progress=progress and console.is_terminal, dim=dim)
        secs = time.perf_counter() - t0
        if prec.store in ("int8", "uint8") and ranges is None:
            from l2v_cli.encoding.quantize import calibration_ranges

            cal = emb if cal_texts is None else enc.encode(cal_texts, instruction=instruction, batch_size=batch_size,
                                                          normalize=normalize, dim=dim)
            ranges = calibration_ranges(cal)
        from l2v_cli.encoding.quantize import quantize

        emb = quantize(emb, prec, ranges)
        if ranges is not None:
            _write_npy(ranges_path(output), ranges)
        np.save(tmp, emb, allow_pickle=False)
        tmp.flush()
        os.fsync(tmp.fileno())
        tmp.close()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp.name, 0o666 & ~umask)  # temp files are private (0600); the result is not
        os.replace(tmp.name, output)
    except BaseException:
        tmp.close()
        if os.path.exists(tmp.name):
            os.unlink(tmp.name)
        raise
    stats = enc.last_stats
    console.print(
        f"encoded [bold]{len(texts)}[/] texts → {output} ({emb.shape[0]}×{emb.shape[1]} {emb.dtype}, {prec}"
        + (f"; ranges → {ranges_path(output)}" if ranges is not None else "") + ") "
        f"in {secs:.2f} s: [bold]{len(texts) / max(secs, 1e-9):.1f}[/] sentences/s, "
        f"{stats.get('tokens', 0)} tokens; pooling={pooling}, dtype={str(enc.dtype).replace('torch.', '')}, "
        f"device={enc.device}, model loaded in {t_load:.1f} s",
        highlight=False, soft_wrap=True,
    )


def ranges_path(output: Path) -> Path:
    """Where the int8/uint8 ranges of OUT.npy go: OUT.ranges.npy."""
    return output.with_name(output.name[:-len(".npy")] + ".ranges.npy")


def _write_npy(path: Path, arr) -> None:
    import numpy as np

    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as f:
        np.save(f, arr, allow_pickle=False)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(f.name, 0o666 & ~umask)
    os.replace(f.name, path)


def register(app) -> None:
    app.command("encode", no_args_is_help=True)(encode_command)
