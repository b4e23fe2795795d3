"""Stage `enable-bidir`: write a copy of MODEL whose attention is bidirectional — and prove it.

    report = enable_bidir("smollm2-135m", "out/bidir")

1. Resolve and load MODEL with its LM head (MNTP, the next stage, needs it), switch attention to
   bidirectional and (with `verify`) run the probe in memory.
2. Save safetensors weights, tokenizer and a config.json with `"is_causal": false` plus an `l2v`
   block recording how it was made (l2v version, source, attention kernel, dtype, probe results).
   When the kernel used is `eager` it is pinned in config.json (`"attn_implementation": "eager"`)
   so that a plain `from_pretrained` uses it too.
3. With `verify`, reload the written folder with plain `transformers.AutoModel.from_pretrained`
   (no l2v code involved) and probe it again: if the plain reload is not bidirectional — an
   architecture whose attention reads its own per-module flag under that kernel — refuse.
Everything is written into a temp folder renamed into place at the end: on any failure OUT is
not created (or, with `overwrite`, the previous OUT is left as it was).

dtype: "original" (default) saves in the dtype the source checkpoint declares (`dtype` /
`torch_dtype` in its config.json; float32 for GGUF conversions and tiny models, and when it
declares none); or an explicit float32 / bfloat16 / float16. The probes always run in float32
(their exactness checks need it), so with `verify` the model is loaded in float32 and cast just
before saving.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from l2v_cli.errors import L2VError, did_you_mean
from l2v_cli.stages import registry
from l2v_cli.utils.dtypes import NAMES as DTYPE_NAMES
from l2v_cli.utils.dtypes import canonical

STAGE = registry.of_module(__name__)

ATTN_CHOICES = ("auto", "sdpa", "eager", "flash_attention_2")
DTYPE_CHOICES = ("original", *DTYPE_NAMES)


@dataclass
class EnableBidirReport:
    """What `enable_bidir` did; `probe` is the in-memory check, `reload_probe` the plain reload's."""

    out: Path
    source: dict
    architecture: str
    attn_implementation: str  # the kernel actually used (may differ from the one asked for)
    dtype: str  # the dtype the weights were saved in
    params: int
    verified: bool
    probe: Optional[object] = None  # l2v_cli.modeling.bidir.ProbeReport
    reload_probe: Optional[object] = None
    timings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"out": str(self.out), "source": self.source, "architecture": self.architecture,
                "attn_implementation": self.attn_implementation, "dtype": self.dtype,
                "params": self.params, "verified": self.verified,
                "probe": _probe_dict(self.probe), "reload_probe": _probe_dict(self.reload_probe),
                "timings": {k: round(v, 2) for k, v in self.timings.items()}}


def _probe_dict(report) -> Optional[dict]:
    if report is None:
        return None
    return {"ok": report.ok, "attn_implementation": report.attn_implementation,
            "checks": dict(report.checks),
            "details": {k: float(f"{v:.3g}") for k, v in report.details.items()}}


def _check_choice(value: str, choices, where: str) -> None:
    if value not in choices:
        raise L2VError(f"unknown {where.lstrip('-').replace('-', ' ')} {value!r}", where=where,
                       fix=did_you_mean(value, choices))


def source_dtype(folder: Path) -> str:
    """The dtype a checkpoint folder declares in its config.json (float32 if none)."""
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return "float32"
    for cfg_part in (cfg, cfg.get("text_config") or {}):
        name = cfg_part.get("dtype") or cfg_part.get("torch_dtype")
        if isinstance(name, str):
            name = name.replace("torch.", "")
            if name in DTYPE_NAMES:
                return name
    return "float32"


def _update_config_json(folder: Path, **entries) -> None:
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(entries)
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def enable_bidir(model_spec: str | Path, out: str | Path, *, attn_implementation: str = "auto",
                 verify: bool = True, dtype: str = "original", overwrite: bool = False,
                 trust_remote_code: bool = False, allow_pickle: bool = False, sink: str = "auto") -> EnableBidirReport:
    """Write a bidirectional copy of `model_spec` to `out` (see the module doc); L2VError on failure."""
    out = Path(out).expanduser().absolute()
    _check_choice(attn_implementation, ATTN_CHOICES, "--attn-implementation")
    dtype = canonical("original" if dtype == "auto" else dtype, extra=("original",))
    # Cheap checks before the (possibly long) load; atomic_dir repeats them.
    from l2v_cli.utils.atomic import check_writable_parent

    if (out.exists() or out.is_symlink()) and not overwrite:
        raise L2VError(f"OUT {out} already exists", where=str(out),
                       fix="pass --overwrite to replace it, or choose another path")
    check_writable_parent(out)

    from l2v_cli.modeling.bidir import ProbeFailed
    from l2v_cli.modeling.loading import kernel_candidates
    from l2v_cli.modeling.sources import check_decoder_only, resolve_model

    t0 = time.perf_counter()
    resolved = resolve_model(str(model_spec), trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    resolve_s = time.perf_counter() - t0
    check_decoder_only(resolved.path)
    kernels, why = ([attn_implementation], "") if attn_implementation != "auto" else kernel_candidates(resolved.path)
    failed: list[str] = []
    for i, kernel in enumerate(kernels):
        choice = ""
        if attn_implementation == "auto":
            choice = f"auto -> {kernel}: {why}" + (f", after {', '.join(failed)} failed the probe" if failed else "")
        try:
            report = _enable_with(resolved, out, kernel, attn_implementation, choice, verify=verify, dtype=dtype, sink=sink,
                                  overwrite=overwrite, trust_remote_code=trust_remote_code,
                                  allow_pickle=allow_pickle, t0=t0)
        except ProbeFailed as e:
            if i + 1 == len(kernels):
                raise
            failed.append(kernel)
            print(f"l2v: bidir.attn_implementation auto: {kernel} fails the bidirectionality probe ({e.what}); "
                  f"trying {kernels[i + 1]}", file=sys.stderr, flush=True)
            continue
        report.timings["resolve_s"] = resolve_s
        if choice:
            print(f"l2v: bidir.attn_implementation {choice}", file=sys.stderr, flush=True)
        return report
    raise AssertionError("unreachable")


def _enable_with(resolved, out: Path, attn_implementation: str, requested: str, choice: str, *, verify: bool,
                 dtype: str, sink: str, overwrite: bool, trust_remote_code: bool, allow_pickle: bool,
                 t0: float) -> EnableBidirReport:
    """`enable_bidir` under one kernel; ProbeFailed when the model is not bidirectional under it."""
    import torch
    import transformers

    from l2v_cli import __version__
    from l2v_cli.modeling.bidir import ProbeFailed, architecture_name, probe_bidirectional
    from l2v_cli.modeling.loading import load_model
    from l2v_cli.utils.atomic import atomic_dir
    from l2v_cli.utils.dtypes import to_torch

    timings: dict[str, float] = {}

    save_dtype = source_dtype(resolved.path) if dtype == "original" else dtype

    t = time.perf_counter()
    loaded = load_model(str(resolved.path), dtype="float32" if verify else save_dtype,
                        attn_implementation=attn_implementation, bidirectional=True, verify=False,
                        lm_head=True, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    model, tok = loaded.model, loaded.tokenizer
    timings["load_s"] = time.perf_counter() - t
    arch = architecture_name(model)
    used_attn = str(model.config._attn_implementation)
    params = sum(p.numel() for p in model.parameters())
    device = next(model.parameters()).device

    probe = None
    if verify:
        t = time.perf_counter()
        probe = probe_bidirectional(_base_model(model))  # skip the LM head: same attention, cheaper
        timings["probe_s"] = time.perf_counter() - t
        if not probe.ok:
            raise ProbeFailed(
                f"architecture {arch} stays causal or leaks padding under attn_implementation="
                f"{used_attn!r} (failed checks: {', '.join(probe.failed())})", where="bidirectional probe",
                fix=(_eager_fix() if used_attn != "eager" else _unsupported_fix()))

    source = resolved.describe()
    l2v_block = {
        "version": __version__, "stage": STAGE.name, "source": source,
        "attn_implementation": used_attn, "requested_attn_implementation": requested,
        **({"attn_choice": choice} if choice else {}),
        "dtype": save_dtype, "verified": verify, "probe": _probe_dict(probe), "reload_probe": None,
        "transformers": transformers.__version__, "torch": torch.__version__.split("+")[0],
    }  # no timestamp: the same model gives the same bytes in every run (shared eval cache rows)

    reload_probe = None
    with atomic_dir(out, overwrite=overwrite) as tmp:
        t = time.perf_counter()
        if model.dtype != to_torch(save_dtype):
            model.to(to_torch(save_dtype))
        model.config.is_causal = False
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        l2v_block["sink"] = _save_sink(tmp, tok, sink)
        pinned = {"attn_implementation": "eager"} if used_attn == "eager" else {}
        _update_config_json(tmp, is_causal=False, l2v=l2v_block, **pinned)
        timings["save_s"] = time.perf_counter() - t
        del model, loaded
        gc.collect()

        if verify:
            t = time.perf_counter()
            reload_probe, reload_causal = _plain_reload_probe(tmp, device, trust_remote_code)
            timings["verify_s"] = time.perf_counter() - t
            if reload_causal or not reload_probe.ok:
                failed = ["config.is_causal"] if reload_causal else reload_probe.failed()
                raise ProbeFailed(
                    f"the written model ({arch}) is not bidirectional when reloaded with plain "
                    f"transformers AutoModel.from_pretrained under attn_implementation="
                    f"{reload_probe.attn_implementation!r} (failed checks: {', '.join(failed)}); "
                    "nothing was written",
                    where="verify of the saved folder",
                    fix=_eager_fix() if used_attn != "eager" else _unsupported_fix())
            l2v_block["reload_probe"] = _probe_dict(reload_probe)
            _update_config_json(tmp, l2v=l2v_block)
    timings["total_s"] = time.perf_counter() - t0
    return EnableBidirReport(out=out, source=source, architecture=arch, attn_implementation=used_attn,
                             dtype=save_dtype, params=params, verified=verify, probe=probe,
                             reload_probe=reload_probe, timings=timings)


def run_enable_bidir(recipe, model_spec: str | Path, out: str | Path, ctx=None) -> EnableBidirReport:
    """The enable-bidir stage of a run: `enable_bidir` with the recipe's `bidir` section. A folder
    left by an interrupted run is replaced (the stage writes atomically: it is never half there)."""
    return enable_bidir(model_spec, out, attn_implementation=recipe.bidir.attn_implementation,
                        verify=recipe.bidir.verify, overwrite=True, sink=recipe.bidir.sink)


def _save_sink(folder: Path, tok, spec: str) -> Optional[dict]:
    """Make the saved tokenizer prepend the attention sink (l2v_cli.modeling.sink); None when there
    is none. A tokenizer class that rebuilds its post-processor on load would drop it: then the
    folder keeps the plain tokenizer and one line says so."""
    from transformers import AutoTokenizer

    from l2v_cli.modeling.sink import install_sink, reads_sink, sink_ids

    ids = sink_ids(tok, spec)
    if not ids:
        return None
    original = (folder / "tokenizer.json").read_bytes() if (folder / "tokenizer.json").exists() else None
    install_sink(folder, tok, ids)
    if not reads_sink(AutoTokenizer.from_pretrained(folder), ids):
        (folder / "tokenizer.json").write_bytes(original)
        print(f"l2v: warning: {type(tok).__name__} rebuilds its post-processor when loaded, so the attention "
              "sink (bidir.sink) cannot be kept; bare texts may embed poorly — use an instruction",
              file=sys.stderr, flush=True)
        return None
    return {"spec": spec, "ids": ids, "tokens": tok.convert_ids_to_tokens(ids)}


def _base_model(model):
    """The decoder under a *ForCausalLM (what AutoModel loads); the model itself if there is none."""
    try:
        base = model.get_decoder()
    except (AttributeError, NotImplementedError):
        return model
    return base if base is not None and base is not model else model


def _eager_fix() -> str:
    return ("rerun with --attn-implementation eager (recipe: bidir.attn_implementation=eager), "
            "which l2v pins in config.json")


def _unsupported_fix() -> str:
    return "this architecture is not supported for bidirectional attention yet — please report it"


def _plain_reload_probe(folder: Path, device, trust_remote_code: bool):
    """Reload `folder` with plain transformers (no l2v patching) in float32 and probe it."""
    import warnings

    import torch
    from transformers import AutoModel

    from l2v_cli.modeling.bidir import probe_bidirectional

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = AutoModel.from_pretrained(folder, dtype=torch.float32, trust_remote_code=trust_remote_code)
    plain.to(device).eval()
    try:
        causal = getattr(plain.config, "is_causal", True) is not False
        return probe_bidirectional(plain), causal
    finally:
        del plain
        gc.collect()


__all__ = ["EnableBidirReport", "enable_bidir", "run_enable_bidir", "source_dtype", "ATTN_CHOICES", "DTYPE_CHOICES"]
