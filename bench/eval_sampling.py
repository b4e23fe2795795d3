"""Sampled against full evaluation: how far the seeded `--limit` samples of the expensive tasks
(SciFact, Banking77) move a score, and whether they still rank models as the full sets do.

    python -m bench.run sampling [--models smollm2-135m@causal,smollm2-135m@bidirectional]
                                 [--recipe cpu-demo] [--limit scifact=30,100] [--threads 2]

Each model is scored on every task at full size and at each sampled size, under both protocols
(no prompt / instruction). The sampled sizes default to the recipe's `eval.task_limits` (what the
demo's tables print); `--limit TASK=N[,N...]` adds or replaces them. Per model, task, protocol and
size: the score, Δ = sampled − full, and the wall time of that evaluation. Per task, protocol and
size over the models: the mean Δ (bias), the largest |Δ|, and how many model pairs the sample
orders as the full set does. The embedding cache is on, so a rerun encodes nothing: `encoded` and
`cached` count texts per evaluation and overall (a rerun's `encoded` is 0).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

TASKS = ("scifact", "banking77")


def log(msg: str) -> None:
    print(f"[bench sampling] {msg}", file=sys.stderr, flush=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run sampling", description=__doc__.splitlines()[0])
    p.add_argument("--models", default="smollm2-135m@causal,smollm2-135m@bidirectional",
                   help="comma-separated model specs (aliases, folders, @causal / @bidirectional)")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--recipe", default="cpu-demo", help="whose eval.task_limits are the sampled sizes")
    p.add_argument("--limit", action="append", default=[], metavar="TASK=N[,N...]",
                   help="sampled sizes of a task (repeatable; replaces the recipe's for that task)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--batch-size", type=int, default=32)
    return p


def sample_sizes(a: argparse.Namespace, tasks: list[str]) -> dict[str, list[int]]:
    """{task: [sampled sizes]}: the recipe's eval.task_limits, then each --limit."""
    from l2v_cli.config.loader import load_recipe

    ev = load_recipe(a.recipe).eval
    sizes = {t: [ev.task_limits.get(t, ev.limit)] if ev.task_limits.get(t, ev.limit) else [] for t in tasks}
    for spec in a.limit:
        task, sep, ns = spec.partition("=")
        if not sep or task not in sizes:
            raise SystemExit(f"bench sampling: --limit {spec!r}: expected TASK=N[,N...] with TASK in {tasks}")
        sizes[task] = sorted({int(n) for n in ns.split(",") if n.strip()})
    return sizes


def agreement(scores: dict[str, float], full: dict[str, float]) -> tuple[int, int]:
    """(model pairs the sample orders as the full set does, pairs compared); ties count as alike
    only when both sides tie."""
    sign = lambda x: (x > 0) - (x < 0)  # noqa: E731
    pairs = list(itertools.combinations(sorted(full), 2))
    alike = sum(sign(scores[a] - scores[b]) == sign(full[a] - full[b]) for a, b in pairs)
    return alike, len(pairs)


def summarise(rows: list[dict]) -> list[dict]:
    """One line per (task, protocol, sampled size) over the models."""
    out = []
    keys = sorted({(r["task"], r["protocol"], r["limit"]) for r in rows if r["limit"] is not None})
    for task, protocol, limit in keys:
        full = {r["model"]: r["score"] for r in rows
                if (r["task"], r["protocol"], r["limit"]) == (task, protocol, None)}
        samp = {r["model"]: r["score"] for r in rows if (r["task"], r["protocol"], r["limit"]) == (task, protocol, limit)}
        deltas = [samp[m] - full[m] for m in full]
        alike, pairs = agreement(samp, full)
        out.append({"task": task, "protocol": protocol, "limit": limit, "models": len(full),
                    "mean_delta": round(sum(deltas) / len(deltas), 2),
                    "max_abs_delta": round(max(abs(d) for d in deltas), 2),
                    "pairs_ordered_alike": f"{alike}/{pairs}"})
    return out


def run(argv: list[str]) -> dict:
    import torch

    from l2v_cli.eval.runner import evaluate, load_encoder
    from l2v_cli.eval.tasks import get_task

    a, _ = parser().parse_known_args(argv)
    torch.set_num_threads(a.threads)
    tasks = [t.strip() for t in a.tasks.split(",") if t.strip()]
    sizes = sample_sizes(a, tasks)
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    rows, calls = [], []
    for spec in models:
        enc, _, load_s = load_encoder(spec, dtype=a.dtype)
        log(f"{spec}: loaded in {load_s:.1f} s ({enc.dtype})")
        for task in tasks:
            for limit in [None, *sizes[task]]:
                t0 = time.perf_counter()
                res = evaluate(enc, [get_task(task, limit=limit)], batch_size=a.batch_size)
                wall = time.perf_counter() - t0
                r = res["tasks"][task]
                enc_n = sum(p["encoded"] for p in r.values())
                cached_n = sum(p["cached"] for p in r.values())
                calls.append({"model": spec, "task": task, "limit": limit, "wall_s": round(wall, 1),
                              "encoded": enc_n, "cached": cached_n})
                log(f"{spec} {task} limit={limit}: {wall:.1f} s, encoded {enc_n}, cached {cached_n}")
                for protocol, p in r.items():
                    rows.append({"model": spec, "task": task, "protocol": protocol, "limit": limit,
                                 "metric": p["main_metric"], "score": round(p[p["main_metric"]], 2),
                                 "n": p["n"], **({"docs": p["docs"]} if "docs" in p else {})})
        del enc
    full = {(r["model"], r["task"], r["protocol"]): r["score"] for r in rows if r["limit"] is None}
    for r in rows:  # Δ against the same model's full-set score
        if r["limit"] is not None:
            r["delta"] = round(r["score"] - full[r["model"], r["task"], r["protocol"]], 2)
    return {"threads": a.threads, "dtype": a.dtype, "sample_sizes": sizes, "models": models,
            "summary": summarise(rows), "rows": rows, "evaluations": calls,
            "encoded": sum(c["encoded"] for c in calls), "cached": sum(c["cached"] for c in calls)}
