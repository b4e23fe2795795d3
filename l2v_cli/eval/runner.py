"""`evaluate()`: load a model once, run tasks with the embedding cache, return one results dict.

    from l2v_cli.eval import evaluate
    res = evaluate("smollm2-135m", "stsb,banking77", bidirectional=False)
    res["tasks"]["stsb"]["no_prompt"]["spearman"]     # also ["instruction"]

MODEL may carry its attention mode as a suffix: `MODEL@causal` or `MODEL@bidirectional`
(`@bidir`), so a comparison of one checkpoint in both modes is two plain specs. Also here: the
`--mteb` bridge (our Encoder behind mteb's encoder protocol) and the atomic JSON writer.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from l2v_cli.encoding.dims import FULL, parse_dims, resolve_dims
from l2v_cli.encoding.quantize import parse_precisions
from l2v_cli.errors import L2VError
from l2v_cli.eval.cache import CachedEncoder
from l2v_cli.eval.compact import RESCORE_MULTIPLIER, per_byte_rows
from l2v_cli.eval.tasks import MTEB_INSTRUCTIONS, Task, as_prefix, column, parse_protocols, parse_tasks

MODE_SUFFIXES = {"@causal": False, "@bidirectional": True, "@bidir": True}


def parse_model_spec(spec: str, bidirectional: bool | None = None) -> tuple[str, bool | None]:
    """'MODEL@causal' -> ('MODEL', False); a suffix and a conflicting explicit mode is an error.
    An existing path that happens to end in '@causal' is taken as a path."""
    spec = str(spec)
    for suffix, mode in MODE_SUFFIXES.items():
        if spec.endswith(suffix) and len(spec) > len(suffix) and not Path(spec).expanduser().exists():
            if bidirectional is not None and bidirectional != mode:
                raise L2VError(f"{spec!r} asks for {'bidirectional' if mode else 'causal'} attention but "
                               f"{'--bidirectional' if bidirectional else '--causal'} was also given",
                               where="MODEL", fix="give the attention mode once")
            return spec[:-len(suffix)], mode
    return spec, bidirectional


def mode_name(bidirectional: bool) -> str:
    return "bidirectional" if bidirectional else "causal"


def evaluate(model, tasks: str | Sequence[str | Task] | None = None, *, pooling: str = "mean", dtype: str = "auto",
             batch_size: int = 32, max_length: int = 512, bidirectional: bool | None = None,
             protocols: str | Sequence[str] | None = None, cache: bool = True, limit: int | None = None,
             seed: int = 42, dims: str | Sequence | None = None, precisions: str | Sequence[str] | None = None,
             rescore_multiplier: int = RESCORE_MULTIPLIER,
             attn_implementation: str = "sdpa", trust_remote_code: bool = False, show_progress: bool = False,
             on_task: Callable[[str, dict], None] | None = None,
             on_start: Callable[[str], None] | None = None) -> dict:
    """Evaluate MODEL (spec or loaded `Encoder`) on `tasks` (see `parse_tasks`; None = the four
    shipped ones). Returns

        {"model": label, "spec", "path", "settings": {...}, "load_s",
         "tasks": {name: {protocol: {<metric>: value, ..., "main_metric", "n", "time_s",
                                     "encoded", "cached", "instruction"}}}}

    `protocols` (see `parse_protocols`; None = both): "no_prompt" runs every text bare, as
    `SentenceTransformer(path).encode(texts)` does; "instruction" puts the task's instruction on
    the query side (the LLM2Vec / E5 protocol). Metrics are ×100. `encoded`/`cached` count texts
    run through the model / read from the cache.
    `dims` ('64,128,full') and/or `precisions` ('float32,int8,binary+int8'): also score every task
    on each (dim, precision) view of the same embeddings (eval/compact.py): result["per_byte"],
    one row per task, protocol, dim and precision, with the bytes per vector and the share of the
    full-width float32 score. One given alone pairs with full / float32.
    With a loaded Encoder, pooling/dtype/max_length/bidirectional are the Encoder's own (passing
    `bidirectional` is then an error). Task data is checked before the model is loaded.
    `on_start(task)` / `on_task(task, result)` are called around each task (progress display).
    """
    explicit_none = isinstance(tasks, (list, tuple)) and not tasks  # [] = no tasks (e.g. only --mteb)
    task_list = [] if explicit_none else parse_tasks(tasks, limit=limit, seed=seed)
    protocols = parse_protocols(protocols)
    for t in task_list:
        if not t.loaded:
            t.load()
    if not isinstance(batch_size, int) or batch_size < 1:
        raise L2VError(f"batch_size must be a positive integer, got {batch_size!r}", where="--batch-size")
    compact = dims is not None or precisions is not None
    dims = parse_dims(dims if dims is not None else [FULL], "--dims")
    precisions = parse_precisions(precisions if precisions is not None else ["float32"])
    if not isinstance(rescore_multiplier, int) or rescore_multiplier < 1:
        raise L2VError(f"rescore multiplier must be a positive integer, got {rescore_multiplier!r}",
                       where="--rescore-multiplier", fix="e.g. 4")
    if is_encoder(model):
        if bidirectional is not None:
            raise L2VError("bidirectional= applies when evaluate() loads the model, not to a loaded Encoder",
                           where="evaluate(encoder, bidirectional=...)",
                           fix="load it with Encoder.from_pretrained(..., bidirectional=...)")
        enc, spec, load_s = model, str(getattr(model, "name", "encoder")), 0.0
    else:
        enc, spec, load_s = load_encoder(model, pooling=pooling, dtype=dtype, max_length=max_length,
                                         bidirectional=bidirectional, attn_implementation=attn_implementation,
                                         trust_remote_code=trust_remote_code)
    wrapped = CachedEncoder(enc, cache=cache, batch_size=batch_size, show_progress=show_progress)
    st = wrapped.settings
    settings = {"pooling": st["pooling"], "dtype": st["dtype"], "max_length": st["max_length"],
                "attention": mode_name(st["bidirectional"]), "protocols": list(protocols),
                "batch_size": batch_size, "limit": limit, "seed": seed,
                "cache": wrapped.store is not None}
    result = {"model": f"{spec} ({settings['attention']})", "spec": spec,
              "path": str(getattr(enc, "path", "") or ""), "settings": settings, "load_s": round(load_s, 2),
              "tasks": {}}
    if compact:
        hidden = int(enc.dim)
        check = getattr(enc, "check_dim", None)
        for d in resolve_dims(dims, hidden, "--dims"):  # too wide: an error; untrained: a warning
            if check is not None:
                check(d, "--dims")
        result["per_byte"] = []
        result["trained_dims"] = getattr(enc, "trained_dims", None)
    for task in task_list:
        for protocol in protocols:
            t, label = task.under(protocol), column(task.name, protocol)
            if on_start:
                on_start(label)
            enc_before, cached_before = wrapped.encoded, wrapped.cached
            t1 = time.perf_counter()
            r = t.run(wrapped)
            r = {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in r.items()}
            r.update(main_metric=t.main_metric, kind=t.kind, instruction=t.instruction,
                     time_s=round(time.perf_counter() - t1, 2), encoded=wrapped.encoded - enc_before,
                     cached=wrapped.cached - cached_before)
            result["tasks"].setdefault(task.name, {})[protocol] = r
            if compact:
                result["per_byte"] += per_byte_rows(t, protocol, wrapped, r, dims, precisions, hidden,
                                                    rescore_multiplier)
            if on_task:
                on_task(label, r)
    return result


def columns(result: dict) -> dict[str, dict]:
    """{'task (protocol)': one task result under one protocol} of an evaluate() result, in order."""
    return {column(name, protocol): r for name, by_protocol in result["tasks"].items()
            for protocol, r in by_protocol.items()}


def is_encoder(obj) -> bool:
    return hasattr(obj, "encode") and hasattr(obj, "tokenize")


def load_encoder(model: str, *, pooling: str = "mean", dtype: str = "auto", max_length: int = 512,
                 bidirectional: bool | None = None, attn_implementation: str = "sdpa",
                 trust_remote_code: bool = False):
    """(Encoder, spec without its @mode suffix, seconds to load) for a MODEL spec."""
    from l2v_cli.encoding.encoder import Encoder

    spec, bidir = parse_model_spec(str(model), bidirectional)
    _quiet_transformers()
    t0 = time.perf_counter()
    from l2v_cli.gguf.llamacpp import GGUFEncoder, is_l2v_gguf

    if is_l2v_gguf(spec):  # our own GGUF export: run it through llama.cpp, as it is served
        if bidir is not None:
            raise L2VError("a GGUF export runs with the attention it records", where="MODEL",
                           fix="drop @causal/@bidirectional and --causal/--bidirectional for a .gguf")
        return GGUFEncoder(spec, pooling=pooling, max_length=max_length), spec, time.perf_counter() - t0
    enc = Encoder.from_pretrained(spec, pooling=pooling, dtype=dtype, max_length=max_length,
                                  attn_implementation=attn_implementation, bidirectional=bidir,
                                  trust_remote_code=trust_remote_code)
    return enc, spec, time.perf_counter() - t0


def _quiet_transformers() -> None:
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:
        pass


def main_scores(result: dict) -> dict[str, float]:
    """{'task (protocol)': main metric value} of one evaluate() result."""
    return {col: r.get(r.get("main_metric", ""), float("nan")) for col, r in columns(result).items()}


def numeric_metrics(task_result: dict) -> dict[str, float]:
    """The score entries of one task result (metrics, not counts/timings/settings)."""
    skip = {"n", "time_s", "encoded", "cached", "docs", "train_n", "clusters", "main_metric", "kind", "instruction"}
    return {k: v for k, v in task_result.items() if k not in skip and isinstance(v, (int, float))}


def compare(a: dict, b: dict) -> dict[str, dict[str, float]]:
    """Δ = a − b for every metric both results have, per 'task (protocol)' column."""
    out, cols_b = {}, columns(b)
    for name, ra in columns(a).items():
        rb = cols_b.get(name)
        if rb is None:
            continue
        ma, mb = numeric_metrics(ra), numeric_metrics(rb)
        out[name] = {m: ma[m] - mb[m] for m in ma if m in mb}
    return out


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


def write_json(path: str | Path, obj) -> Path:
    """Write `obj` as JSON atomically (temp file beside PATH, then rename); NaN becomes null."""
    from l2v_cli.utils.atomic import check_writable_parent

    path = Path(path).expanduser()
    if path.is_dir():
        raise L2VError(f"output {path} is a folder", where="--output", fix="give a file name, e.g. results.json")
    check_writable_parent(path.absolute(), "--output")
    fd, tmp = tempfile.mkstemp(dir=path.absolute().parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(_json_safe(obj), f, indent=2, ensure_ascii=False)
            f.write("\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


# --------------------------------------------------------------------------- MTEB bridge
def mteb_encoder(encoder, *, instructions: bool = True, batch_size: int = 32, name: str | None = None):
    """Our Encoder behind mteb's encoder protocol (mteb >= 2: `encode(DataLoader, *, task_metadata,
    hf_split, hf_subset, prompt_type)`; a plain list of texts, as mteb 1 passes, works too).

    Instructions come from `MTEB_INSTRUCTIONS` by task name: for retrieval-like tasks only on
    the query side (prompt_type "query"), for the others on every text; unknown tasks get none.
    Similarity is cosine."""
    from mteb.models import ModelMeta

    label = name or str(getattr(encoder, "name", "l2v-encoder"))
    if "/" not in label:
        label = f"l2v/{Path(label).name or 'encoder'}"
    meta = ModelMeta.create_empty(overwrites=dict(name=label, revision="local", similarity_fn_name="cosine",
                                                  embed_dim=getattr(encoder, "dim", None),
                                                  max_tokens=getattr(encoder, "max_length", None),
                                                  framework=["PyTorch"], use_instructions=instructions))

    class L2VMTEBEncoder:
        mteb_model_meta = meta

        def __init__(self):
            self.encoder = encoder

        def _instruction(self, task_metadata, prompt_type) -> str | None:
            if not instructions or task_metadata is None:
                return None
            name = str(getattr(task_metadata, "name", ""))
            base, _, version = name.rpartition(".v")  # "STSBenchmark.v2" -> "STSBenchmark"
            instr = MTEB_INSTRUCTIONS.get(name) or (MTEB_INSTRUCTIONS.get(base) if version.isdigit() else None)
            kind = str(getattr(task_metadata, "type", ""))
            pt = str(getattr(prompt_type, "value", prompt_type) or "")
            if instr and ("Retrieval" in kind or "Reranking" in kind or "InstructionRetrieval" in kind) \
                    and pt != "query":
                return None  # documents are encoded without an instruction
            return as_prefix(instr)

        def encode(self, inputs, *, task_metadata=None, hf_split=None, hf_subset=None, prompt_type=None,
                   **kwargs) -> np.ndarray:
            if isinstance(inputs, str):
                texts = [inputs]
            elif isinstance(inputs, (list, tuple)) and all(isinstance(x, str) for x in inputs):
                texts = list(inputs)
            else:  # a DataLoader of batches {"text": [...], ...}
                texts = []
                for batch in inputs:
                    texts.extend(batch["text"])
            if task_metadata is None and "task_name" in kwargs:  # mteb 1.x
                task_metadata = type("Meta", (), {"name": kwargs["task_name"], "type": ""})()
            return self.encoder.encode(texts, instruction=self._instruction(task_metadata, prompt_type),
                                       batch_size=int(kwargs.get("batch_size") or batch_size))

        @staticmethod
        def similarity(e1, e2):
            import torch

            a = np.atleast_2d(np.asarray(e1, dtype=np.float32))
            b = np.atleast_2d(np.asarray(e2, dtype=np.float32))
            from l2v_cli.eval.metrics import cosine_matrix

            return torch.from_numpy(cosine_matrix(a, b))

        @staticmethod
        def similarity_pairwise(e1, e2):
            import torch

            from l2v_cli.eval.metrics import cosine_pairs

            a = np.atleast_2d(np.asarray(e1, dtype=np.float32))
            b = np.atleast_2d(np.asarray(e2, dtype=np.float32))
            return torch.from_numpy(cosine_pairs(a, b).astype(np.float32))

    return L2VMTEBEncoder()


def run_mteb(encoder, task_names: Sequence[str] | str, *, instructions: bool = True, batch_size: int = 32,
             tasks: Sequence | None = None) -> dict[str, dict]:
    """Run mteb tasks on our encoder: {task: {"main_score": ×100, "main_metric": ..., "time_s"}}.

    `tasks`: already-built mteb task objects (e.g. with data injected, for offline tests);
    otherwise `task_names` are looked up with `mteb.get_tasks`, whose data comes from the Hub."""
    try:
        import mteb
    except ImportError:
        raise L2VError("--mteb needs the `mteb` package, which is not installed", where="--mteb",
                       fix="pip install mteb (its task data is downloaded from the Hugging Face Hub)") from None
    if isinstance(task_names, str):
        task_names = [s.strip() for s in task_names.split(",") if s.strip()]
    if tasks is None:
        try:
            tasks = list(mteb.get_tasks(tasks=list(task_names), languages=["eng"]))
        except Exception as e:  # KeyError / ValueError for unknown names, with mteb's own suggestions
            raise L2VError(f"mteb does not know task(s) {', '.join(task_names)}: {str(e).splitlines()[0][:200]}",
                           where="--mteb",
                           fix="use MTEB task names, e.g. STSBenchmark,SciFact,Banking77Classification") from None
        found = {t.metadata.name for t in tasks}
        missing = [n for n in task_names if n not in found]
        if missing:
            from l2v_cli.errors import did_you_mean

            raise L2VError(f"mteb has no English task {missing[0]!r}", where="--mteb",
                           fix=did_you_mean(missing[0], list(MTEB_INSTRUCTIONS)))
    model = mteb_encoder(encoder, instructions=instructions, batch_size=batch_size)
    out = {}
    for task in tasks:
        t0 = time.perf_counter()
        try:
            res = mteb.evaluate(model, task, cache=None, co2_tracker=False, show_progress_bar=False,
                                encode_kwargs={"batch_size": batch_size}, overwrite_strategy="always")
        except L2VError:
            raise
        except Exception as e:
            first = (str(e).splitlines() or [type(e).__name__])[0][:300]
            raise L2VError(f"mteb could not run {task.metadata.name}: {type(e).__name__}: {first}", where="--mteb",
                           fix="mteb loads task data from the Hugging Face Hub: make it reachable (or its "
                           "datasets cache populated), or evaluate the shipped copies with --tasks") from None
        tr = res.task_results[0]
        out[task.metadata.name] = {"main_score": 100 * float(tr.get_score()), "main_metric": task.metadata.main_score,
                                   "time_s": round(time.perf_counter() - t0, 2)}
    return out
