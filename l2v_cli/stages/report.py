"""The summary `l2v convert` prints at the end: wall time per stage, training throughput and the
fraction of the machine's matmul rate it reached, peak memory — read back from the run folder."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path


def peak_rss_mb() -> float:
    """Peak resident memory of this process and its finished children (launched workers), MB."""
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20  # kB on Linux, bytes on macOS
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, kids) * scale, 1)


def _tokens_per_s(stage_dir: Path) -> float | None:
    """Mean of the logged tokens/s windows (all processes together)."""
    path = stage_dir / "metrics.jsonl"
    if not path.exists():
        return None
    vals = [r["tokens_per_s"] for r in map(json.loads, path.read_text().splitlines()) if "tokens_per_s" in r]
    return round(sum(vals) / len(vals), 1) if vals else None


def stage_rows(stages, recipe, model: str, peak_gflops: float | None) -> list[dict]:
    """One row per stage from its DONE.json / metrics.jsonl (stages skipped this run included)."""
    from l2v_cli.modeling.arch import resolve_arch
    from l2v_cli.stages import registry
    from l2v_cli.utils.perf import lora_train_flops_per_token

    try:
        arch = resolve_arch(model)[0]
    except Exception:  # no architecture numbers (unusual model): report without FLOP rates
        arch = None
    rows = []
    for st in stages:
        done = st.folder / "DONE.json"
        rec = json.loads(done.read_text()) if done.exists() else {}
        row = {"stage": st.folder.name, "seconds": rec.get("seconds"), "peak_rss_mb": rec.get("peak_rss_mb")}
        spec = registry.get(st.name)
        if spec.trains:
            section = getattr(recipe, spec.section)
            tps = _tokens_per_s(st.folder)
            row["tokens_per_s"] = tps
            if tps and arch is not None:
                gflops = tps * lora_train_flops_per_token(arch, section.max_seq_length) / 1e9
                row["gflops"] = round(gflops, 1)
                if peak_gflops:
                    row["peak_fraction"] = round(gflops / peak_gflops, 3)
        rows.append(row)
    return rows


def render(rows: list[dict], peak_gflops: float | None, dtype: str, console) -> None:
    from rich.table import Table

    cap = (f"matmul peak measured in this run: {peak_gflops:.0f} GFLOP/s ({dtype}); GFLOP/s = tokens/s × training "
           "FLOPs per token (forward + backward to the activations: LoRA on a frozen base)") if peak_gflops else None
    t = Table(title="Stages", title_justify="left", header_style="bold", caption=cap, caption_justify="left")
    # RSS is the process's peak so far (in-process stages share one process), read after each stage.
    for c in ("stage", "wall s", "tokens/s", "GFLOP/s", "of peak", "peak RSS MB so far"):
        t.add_column(c, justify="left" if c == "stage" else "right")

    def f(v, fmt="{:.0f}"):
        return "—" if v is None else fmt.format(v)

    for r in rows:
        t.add_row(r["stage"], f(r["seconds"]), f(r.get("tokens_per_s")), f(r.get("gflops"), "{:.1f}"),
                  f(r.get("peak_fraction"), "{:.0%}"), f(r.get("peak_rss_mb")))
    console.print(t)
