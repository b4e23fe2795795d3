"""`export` itself: merge the chain, write the decoder, the tokenizer, the sentence-transformers
files and the card into a temp folder, prove the plain reload is bidirectional, rename into place."""

from __future__ import annotations

import datetime as _dt
import gc
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from l2v_cli.errors import L2VError
from l2v_cli.modeling.sink import installed_sink
from l2v_cli.stages import registry
from l2v_cli.stages.common import Chain
from l2v_cli.stages.export.calibrate import check_calibration, fit_export_scale
from l2v_cli.stages.export.card import model_card
from l2v_cli.stages.export.source import ExportSource, resolve_source, trained_dims
from l2v_cli.stages.export.st_files import write_st_files
from l2v_cli.stages.export.tokenizer import boundary_check, write_tokenizer
from l2v_cli.utils.dtypes import canonical, to_torch
from l2v_cli.utils.sizes import parse_size

STAGE = registry.EXPORT


def _check_options(dtype: str, pooling: str, max_shard_size, max_seq_length: int) -> tuple[str, str]:
    from l2v_cli.encoding.methods import check_pooling

    dtype = canonical(dtype)
    check_pooling(pooling)
    shard = max_shard_size
    if isinstance(shard, str) and shard.strip().isdigit():
        shard = int(shard.strip())
    try:
        parse_size(shard)  # transformers reads the text itself (5GB = 5e9 bytes, 5GiB = 5 * 2^30)
    except ValueError as e:
        raise L2VError(f"cannot read max shard size {max_shard_size!r}: {e}", where="--max-shard-size",
                       fix="give a positive size like 5GB, 500MB or a number of bytes") from None
    if not isinstance(max_seq_length, int) or max_seq_length < 1:
        raise L2VError(f"max_seq_length must be a positive integer, got {max_seq_length!r}",
                       where="--max-seq-length", fix="use e.g. 512")
    return dtype, shard


def _load_merged(src: ExportSource):
    """The base model (with its LM head: the adapters were trained on that wrapper) + the chain merged
    by the one merge path of the training stages (`training.lora.merge_adapters`), fp32."""
    from l2v_cli.modeling.loading import load_model
    from l2v_cli.training.lora import merge_adapters

    loaded = load_model(src.chain.base_model, dtype="float32", bidirectional=True, verify=False,
                        lm_head=True, device="cpu")
    return merge_adapters(loaded.model, src.chain.adapters), loaded


def _decoder(model):
    """The transformer body without the LM head (what `AutoModel` loads)."""
    from l2v_cli.encoding.encoder import backbone_of

    return backbone_of(model)


def _licence(src: ExportSource):
    """The licence of the base model's alias (for the card's metadata), when it came from one."""
    from l2v_cli.modeling.aliases import find_alias

    name = (src.chain.source or {}).get("alias")
    alias = find_alias(name) if isinstance(name, str) else None
    return alias.licence if alias is not None else None


def _update_config(tmp: Path, l2v_block: dict) -> None:
    path = tmp / "config.json"
    cfg = json.loads(path.read_text())
    cfg["is_causal"] = False
    old = cfg.get("l2v") or {}
    cfg["l2v"] = {**{k: v for k, v in old.items() if k in ("source", "attn_implementation")}, **l2v_block}
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _verify_reload(folder: Path) -> object:
    """Reload OUT with plain transformers AutoModel and prove it is bidirectional."""
    import warnings

    import torch
    from transformers import AutoModel

    from l2v_cli.modeling.bidir import probe_bidirectional

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = AutoModel.from_pretrained(folder, dtype=torch.float32)
    plain.eval()
    try:
        causal = getattr(plain.config, "is_causal", True) is not False
        report = probe_bidirectional(plain)
        if causal or not report.ok:
            failed = ["config.is_causal"] if causal else report.failed()
            raise L2VError(f"the exported model is not bidirectional when reloaded with plain "
                           f"AutoModel.from_pretrained (failed checks: {', '.join(failed)}); nothing was written",
                           where="verify of the exported folder",
                           fix="export with attn_implementation eager pinned (`l2v enable-bidir --attn-implementation "
                           "eager` on the base), or report this architecture")
        return report
    finally:
        del plain
        gc.collect()


@dataclass
class ExportReport:
    out: Path
    source_kind: str
    chain: Chain
    dtype: str
    pooling: str
    normalize: bool
    files: list[str]
    warnings: list[str]
    verified: bool
    seconds: float


def _warn(msg: str) -> None:
    print(f"l2v: warning: {msg}", file=sys.stderr, flush=True)


def export(source: str | Path, out: str | Path, *, dtype: str = "float32", pooling: str = "mean",
           normalize: bool = False, max_shard_size: str | int = "5GB", query_instruction: str | None = None,
           document_instruction: str | None = None, overwrite: bool = False, recipe=None,
           max_seq_length: int = 512, stage_input: str | Path | None = None, verify: bool = True,
           report: bool = False, calibration: str | Path | None = None, calibration_samples: int = 2000):
    """Export SOURCE (stage folder, checkpoint or bidirectional model folder) to OUT; see the package doc.

    `calibration`: a file of ordinary texts; the export then scales each embedding dimension by
    1/its standard deviation over `calibration_samples` of them (a Dense module before Normalize;
    encoding/dim_scale.py says why).

    Returns OUT (a Path), or an `ExportReport` with `report=True`. L2VError on bad input; on any
    failure OUT is not created (or, with `overwrite`, the previous OUT is left as it was).
    """
    import time

    t0 = time.perf_counter()
    dtype, shard = _check_options(dtype, pooling, max_shard_size, max_seq_length)
    for name, ins in (("--query-instruction", query_instruction), ("--document-instruction", document_instruction)):
        if ins is not None and not isinstance(ins, str):
            raise L2VError(f"{name} must be a string, got {type(ins).__name__}", where=name)
    query_instruction = query_instruction or None
    document_instruction = document_instruction or None
    out = Path(out).expanduser().absolute()
    from l2v_cli.utils.atomic import atomic_dir, check_writable_parent

    if (out.exists() or out.is_symlink()) and not overwrite:
        raise L2VError(f"OUT {out} already exists", where=str(out),
                       fix="pass --overwrite to replace it, or choose another path")
    check_calibration(calibration, calibration_samples)
    src = resolve_source(source, stage_input)
    if out == src.path or src.path in out.parents:
        raise L2VError(f"OUT {out} is inside SOURCE {src.path}", where=str(out), fix="write the export elsewhere")
    check_writable_parent(out)

    import torch
    import transformers

    from transformers.utils import logging as hf_logging

    from l2v_cli import __version__

    hf_logging.disable_progress_bar()  # per-tensor load bars are noise beside our own output
    model, loaded = _load_merged(src)
    decoder = _decoder(model)
    dim = int(decoder.get_input_embeddings().weight.shape[1])
    matryoshka = trained_dims(src.stages, dim)
    warnings_: list[str] = []
    with atomic_dir(out, overwrite=overwrite) as tmp:
        tok_facts = write_tokenizer(tmp, src.tokenizer_dir, pooling)
        tok = tok_facts.pop("tokenizer")
        tok_facts["prefix_tokens"] = tok.convert_ids_to_tokens(tok_facts["prefix"])
        rows = decoder.get_input_embeddings().weight.shape[0]
        if len(tok) > rows:
            raise L2VError(f"the tokenizer has {len(tok)} tokens but the model only {rows} embeddings",
                           where=str(src.tokenizer_dir), fix="the tokenizer does not belong to this chain")
        for name, ins in (("query", query_instruction), ("document", document_instruction)):
            if not ins:
                continue
            ordinary, _ = boundary_check(tok, ins)
            if ordinary:
                msg = (f"the {name} instruction {ins!r} merges with the text's first token when tokenised as one "
                       "string (as sentence-transformers and `l2v encode --instruction` do), so that token is left "
                       "out of the pooling; end the instruction with a newline")
                warnings_.append(msg)
                _warn(msg)
        decoder.config.is_causal = False
        scale, scale_rec = None, None
        if calibration is not None:  # fp32, before the cast: the vectors users get, bare text
            scale, scale_rec = fit_export_scale(decoder, tok, pooling=pooling, max_length=max_seq_length,
                                                calibration=calibration, samples=calibration_samples)
        decoder.to(to_torch(dtype))
        decoder.save_pretrained(tmp, max_shard_size=shard)
        stage_recs = [{"stage": s.stage, "steps": s.steps, "adapter": s.path} for s in src.stages]
        _update_config(tmp, {
            "version": __version__, "stage": STAGE.name, "exported_from": str(src.path), "source_kind": src.kind,
            "base_model": src.chain.base_model, "chain": stage_recs, "pooling": pooling, "normalize": normalize,
            "query_instruction": query_instruction, "document_instruction": document_instruction, "dtype": dtype,
            "max_seq_length": max_seq_length, "sink": installed_sink(tmp), "matryoshka_dims": matryoshka,
            "dim_scale": scale_rec,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "transformers": transformers.__version__, "torch": torch.__version__.split("+")[0]})
        write_st_files(tmp, dim=dim, pooling=pooling, normalize=normalize, max_seq_length=max_seq_length,
                       query_instruction=query_instruction, document_instruction=document_instruction,
                       trained_prompts=trained_prompts(src), dim_scale=scale)
        del model, decoder, loaded
        gc.collect()
        if verify:
            _verify_reload(tmp)
        card = model_card(out.name, src, pooling=pooling, normalize=normalize, dtype=dtype,
                          max_seq_length=max_seq_length, query_instruction=query_instruction,
                          document_instruction=document_instruction, tok_facts=tok_facts,
                          warnings_=warnings_, recipe=recipe, licence=_licence(src), matryoshka_dims=matryoshka,
                          dim_scale=scale_rec)
        (tmp / "README.md").write_text(card)
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
    if not report:
        return out
    return ExportReport(out=out, source_kind=src.kind, chain=src.chain, dtype=dtype, pooling=pooling,
                        normalize=normalize, files=files, warnings=warnings_, verified=verify,
                        seconds=time.perf_counter() - t0)


def trained_prompts(src) -> dict[str, str]:
    """{data set: its instruction as a prompt} of the chain's last supervised stage (queries were
    trained behind these; documents bare), so `encode(q, prompt_name="allnli")` calls the model as
    it was trained."""
    from l2v_cli.encoding import as_prefix

    instr = [s.extra.get("instructions") for s in src.stages if s.extra.get("instructions")]
    return {name: as_prefix(text) for name, text in (instr[-1] if instr else {}).items() if text}

