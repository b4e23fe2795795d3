"""`l2v export SOURCE -o OUT --format gguf|st,gguf`: the GGUF side of the export (the GGUF format
itself, the tokenizer and llama.cpp are l2v_cli/gguf/).

    export_gguf("runs/x/simcse", "runs/x/final", formats=["st", "gguf"], gguf_types=["q8_0"])

The GGUF is always written from a plain merged model folder. SOURCE that is already one (an
`l2v export` folder, or `l2v enable-bidir`'s) is converted as it is; anything else (a stage
folder, a checkpoint) is first merged by the sentence-transformers export into a temp folder.

OUT layouts (all written into a temp folder / temp file and renamed: all or nothing):
  formats [gguf], OUT a folder      OUT/<name>-<type>.gguf (one per type) + README.md (how to serve)
  formats [gguf], OUT ends .gguf    that one file (one type)
  formats [st, gguf]                the sentence-transformers folder + OUT/<name>-<type>.gguf, its
                                    README.md gains a "llama.cpp" section

After writing, when llama-cpp-python is installed, llama.cpp's tokenization of every GGUF is
compared with transformers' on the probe sentences + 50 STS-B sentences: a mismatch stops the
export (nothing written). Without llama-cpp-python the check is skipped with a warning and the
card says so.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from l2v_cli.errors import L2VError, did_you_mean
from l2v_cli.gguf.card import card_section, gguf_card
from l2v_cli.gguf.llamacpp import INSTALL_HINT
from l2v_cli.gguf.vocab import probe_texts
from l2v_cli.gguf.writer import GGUFInfo, check_gguf_pooling, check_gguf_type, check_source, write_gguf
from l2v_cli.stages.common import STAGE_FILE
from l2v_cli.stages.export.run import export
from l2v_cli.stages.export.source import resolve_source
from l2v_cli.utils.atomic import atomic_dir, check_writable_parent

FORMATS = ("st", "gguf")


@dataclass
class GGUFExportReport:
    out: Path
    formats: list[str]
    files: list[GGUFInfo]
    token_check: dict = field(default_factory=dict)  # gguf name -> "n/n" or "not checked"
    st_report: object = None
    warnings: list[str] = field(default_factory=list)


def check_formats(formats) -> list[str]:
    if isinstance(formats, str):
        formats = [f for f in formats.replace(" ", "").split(",") if f]
    out = []
    for f in formats or ["st"]:
        f = str(f).lower()
        if f not in FORMATS:
            raise L2VError(f"unknown export format {f!r}", where="--format", fix=did_you_mean(f, FORMATS))
        if f not in out:
            out.append(f)
    return out


def check_types(types) -> list[str]:
    if isinstance(types, str):
        types = [t for t in types.replace(" ", "").split(",") if t]
    return list(dict.fromkeys(check_gguf_type(t) for t in (types or ["f16"])))


def _is_model_folder(p: Path) -> bool:
    """A plain model folder (config.json + weights), not a stage folder or checkpoint."""
    return (p / "config.json").is_file() and any(p.glob("*.safetensors")) and not (p / STAGE_FILE).exists() \
        and not (p / "adapter_config.json").exists()


def _token_check(gguf_path: Path, folder: Path, info: GGUFInfo) -> str:
    """'N/N' when llama.cpp tokenizes every probe as transformers does; L2VError otherwise."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        return "not checked (llama-cpp-python not installed)"
    from l2v_cli.gguf.llamacpp import check_tokenization
    from l2v_cli.modeling.loading import load_tokenizer

    tok = load_tokenizer(folder)

    def hf(text):
        ids = list(tok(text)["input_ids"])
        if info.add_eos and (not ids or ids[-1] != tok.eos_token_id):
            ids.append(tok.eos_token_id)  # eos pooling: llama.cpp appends EOS, as `l2v encode` does
        return {"input_ids": ids}

    n, bad = check_tokenization(gguf_path, hf, probe_texts())
    if bad:
        raise L2VError(f"llama.cpp tokenizes {len(bad)} of {n} probe texts differently from transformers "
                       f"(e.g. {bad[0]!r}); nothing was written", where=str(folder / "tokenizer.json"),
                       fix="this tokenizer's pre-tokenizer is not reproduced by llama.cpp; use --format st")
    return f"{n}/{n} identical"


def export_gguf(source, out, *, formats=("gguf",), gguf_types=("f16",), pooling: str = "mean",
                allow_causal: bool = False, overwrite: bool = False, check_tokens: bool = True,
                query_instruction: str | None = None, document_instruction: str | None = None,
                normalize: bool | None = None, **st_kwargs) -> GGUFExportReport:
    """Write SOURCE as GGUF (and optionally the sentence-transformers folder) to OUT; see module doc."""
    formats = check_formats(formats)
    types = check_types(gguf_types)
    if "gguf" not in formats:
        raise L2VError("export_gguf needs 'gguf' in formats", where="--format")
    check_gguf_pooling(pooling)
    src = Path(source).expanduser().absolute()
    out = Path(out).expanduser().absolute()
    if not src.exists():
        raise L2VError(f"SOURCE {src} does not exist", where=str(src),
                       fix="give a training-stage folder, a checkpoint or a model folder")
    if out == src or src in out.parents:
        raise L2VError(f"OUT {out} is inside SOURCE {src}", where=str(out), fix="write the export elsewhere")
    single_file = out.suffix.lower() == ".gguf"
    if single_file and (len(types) != 1 or formats != ["gguf"]):
        raise L2VError("OUT ending in .gguf holds one GGUF file: one --gguf-type and --format gguf only",
                       where=str(out), fix="give a folder as OUT to write several types or both formats")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise L2VError(f"OUT {out} already exists", where=str(out),
                       fix="pass --overwrite to replace it, or choose another path")
    if single_file and out.is_dir():
        raise L2VError(f"OUT {out} is a folder", where=str(out), fix="choose another file name")
    check_writable_parent(out)
    direct = _is_model_folder(src) and "st" not in formats and not st_kwargs.get("calibration")
    _check_before_merge(src, direct, pooling, allow_causal)
    instr = {"query_instruction": query_instruction, "document_instruction": document_instruction,
             "normalize": normalize}
    report = GGUFExportReport(out, formats, [])

    def convert_all(folder: Path, target_dir: Path, stem: str) -> None:
        for t in types:
            target = out if single_file else target_dir / f"{stem}-{t}.gguf"
            info = write_gguf(folder, target, gguf_type=t, pooling=pooling, allow_causal=allow_causal,
                              overwrite=single_file and overwrite, **instr)
            try:
                report.token_check[target.name] = (_token_check(target, folder, info) if check_tokens
                                                   else "not checked (--no-check-tokens)")
            except BaseException:
                if single_file:
                    target.unlink(missing_ok=True)
                raise
            report.files.append(info)

    if single_file:
        if direct:
            convert_all(src, out.parent, out.stem)
        else:
            with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.merge-") as tmp:
                convert_all(_st_export(src, Path(tmp) / "model", pooling, instr, st_kwargs, report),
                            out.parent, out.stem)
    else:
        with atomic_dir(out, overwrite=overwrite) as tmp:
            folder = src if direct else _st_export(src, tmp / ".st", pooling, instr, st_kwargs, report)
            convert_all(folder, tmp, out.name)
            if "st" in formats:
                for p in folder.iterdir():
                    shutil.move(str(p), str(tmp / p.name))
                folder.rmdir()
                readme = tmp / "README.md"
                readme.write_text(readme.read_text() + "\n" + card_section(report, tmp))
            else:
                if folder != src:
                    shutil.rmtree(folder)
                (tmp / "README.md").write_text(gguf_card(report, tmp, src))
        for info in report.files:  # the temp folder is OUT now
            info.path = out / info.path.name
    for name, res in report.token_check.items():
        if res.startswith("not checked (llama"):
            _warn(f"{name}: tokenization {res}; to check it: {INSTALL_HINT}")
    return report


def _check_before_merge(src: Path, direct: bool, pooling: str, allow_causal: bool) -> None:
    """Refuse an unsupported architecture / causal source before the (slow) merge."""
    if direct:
        check_source(src, pooling=pooling, allow_causal=allow_causal)
        return
    base = Path(resolve_source(src).chain.base_model)
    if (base / "config.json").is_file():  # the merged export is bidirectional by construction
        check_source(base, pooling=pooling, allow_causal=True)


def _st_export(src: Path, target: Path, pooling: str, instr: dict, st_kwargs: dict, report) -> Path:
    """Merge SOURCE into a plain model folder with the sentence-transformers export."""
    rep = export(src, target, pooling=pooling, query_instruction=instr["query_instruction"],
                 document_instruction=instr["document_instruction"], normalize=bool(instr["normalize"]),
                 report=True, **st_kwargs)
    report.st_report = rep
    report.warnings.extend(rep.warnings)
    return rep.out


def _warn(msg: str) -> None:
    print(f"l2v: warning: {msg}", file=sys.stderr, flush=True)
