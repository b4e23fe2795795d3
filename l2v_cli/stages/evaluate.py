"""The `eval` stage of `l2v convert`: score the final model, and with `eval.ablation` every step
of the chain — the LLM2Vec paper's ablation on your own run:

  causal          the untouched model (enable-bidir's weights, causal attention), mean pooling
  bidirectional   the same weights with bidirectional attention, no training
  + mntp, ...     after each training stage (merged and exported to eval/models/NN_stage)
  final           the export (equals the last training stage's row; not re-evaluated)

Every point writes eval/<point>.json when done, so a killed eval resumes where it stopped; the
embedding cache makes a rerun of a finished point free. eval/eval.json holds the final model's
result (as without ablation), eval/ablation.json (or table.json) the table.
"""

from __future__ import annotations

import json
from pathlib import Path

from l2v_cli.errors import L2VError
from l2v_cli.stages import registry


def eval_tasks(cfg) -> list:
    """The recipe's tasks with per-task limits (`eval.task_limits`) over the global `eval.limit`."""
    from l2v_cli.eval.tasks import DEFAULT_TASKS, get_task

    names = list(cfg.tasks) or list(DEFAULT_TASKS)
    unknown = [k for k in cfg.task_limits if k not in names]
    if unknown:
        raise L2VError(f"eval.task_limits names {unknown[0]!r}, which is not among the tasks {names}",
                       where="key eval.task_limits", fix="limit only tasks listed in eval.tasks")
    return [get_task(n, limit=cfg.task_limits.get(n, cfg.limit)) for n in names]


def ablation_points(stages, final: Path, model: str) -> list[tuple[str, str, object]]:
    """(label, model spec, train stage to export or None) in chain order."""
    bidir = next((s.folder for s in stages if s.name == registry.BIDIR.name), None)
    base = str(bidir) if bidir else model
    points = [("causal", f"{base}@causal", None), ("bidirectional", f"{base}@bidirectional", None)]
    trained = [s for s in stages if registry.get(s.name).trains]
    for s in trained[:-1]:
        points.append(("+ " + registry.get(s.name).section, "", s))
    if trained:
        points.append(("+ " + registry.get(trained[-1].name).section + " (final)", str(final), None))
    return points


def run_eval_stage(recipe, final: str | Path, folder: str | Path, ctx: registry.RunContext) -> dict:
    """The eval stage of a run: score `final` (the export) into `folder`; with `eval.ablation`
    every step of the chain in `ctx.stages` (see the module doc)."""
    from l2v_cli.eval.runner import evaluate, write_json
    from l2v_cli.stages.export import export_from_recipe

    cfg, folder, final = recipe.eval, Path(folder), Path(final)
    stages, model, echo = ctx.stages, ctx.model, ctx.echo
    folder.mkdir(parents=True, exist_ok=True)
    tasks = eval_tasks(cfg)
    opts = dict(batch_size=cfg.batch_size, max_length=cfg.max_length, cache=cfg.cache,
                pooling=recipe.export.pooling, protocols=cfg.protocols, show_progress=True)
    points = ablation_points(stages, final, model) if cfg.ablation else [("final", str(final), None)]
    rows = []
    for label, spec, stage in points:
        slug = label.strip("+ ").split(" ")[0]
        out = folder / f"{slug}.json"
        if stage is not None:
            spec = str(folder / "models" / stage.folder.name)
        if out.exists():  # scored before this eval was interrupted
            result = json.loads(out.read_text())
        else:
            if stage is not None and not (Path(spec) / "config.json").exists():
                export_from_recipe(recipe, stage.folder, spec, overwrite=True, st_only=True)
            echo(f"eval: {label}  ({spec})")
            result = evaluate(spec, tasks, **opts)
            write_json(out, result)
        rows.append(table_row(label, spec, result))
    write_json(folder / "eval.json", result)  # the last point is the final model
    table = eval_table(tasks, result["settings"]["protocols"], rows)
    write_json(folder / ("ablation.json" if cfg.ablation else "table.json"), table)
    return table


def eval_table(tasks, protocols, rows: list[dict]) -> dict:
    """An evaluation table: the tasks, their 'task (protocol)' columns (each task under every
    protocol, side by side) and one row per model (`table_row`)."""
    from l2v_cli.eval.tasks import column

    return {"tasks": {t.name: t.describe() for t in tasks}, "protocols": list(protocols),
            "columns": [column(t.name, p) for t in tasks for p in protocols], "rows": rows}


def table_row(label: str, spec: str, result: dict) -> dict:
    """One row of an evaluation table: main metric per 'task (protocol)' and the eval time of one
    evaluate() result."""
    from l2v_cli.eval.runner import columns, main_scores

    return {"model": label, "spec": spec, "scores": main_scores(result),
            "time_s": round(sum(r.get("time_s", 0) for r in columns(result).values()), 1)}


def render_table(table: dict, console) -> None:
    from rich.table import Table

    from l2v_cli.eval.tasks import PROTOCOLS

    t = Table(title="Evaluation (main metric ×100; higher is better). no prompt = the bare text, as "
              "SentenceTransformer(path).encode(texts) sends it; instruction = the task's instruction "
              "on the query side (LLM2Vec / E5)", title_justify="left", header_style="bold")
    t.add_column("model")
    for name, d in table["tasks"].items():
        for p in table["protocols"]:
            t.add_column(f"{name}\n{d['main_metric']}" + (f"\nlimit {d['limit']}" if d.get("limit") else "")
                         + f"\n{PROTOCOLS[p]}", justify="right")
    t.add_column("eval s", justify="right")
    for r in table["rows"]:
        t.add_row(r["model"], *[f"{r['scores'].get(c, float('nan')):.2f}" for c in table["columns"]],
                  f"{r['time_s']:.0f}")
    console.print(t)
