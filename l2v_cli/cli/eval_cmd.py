"""`l2v eval MODEL [--tasks ...] [--compare OTHER]`: score an encoder, print a table, save JSON.

Tasks are the shipped sets (stsb, stsb-dev, scifact, banking77, stackoverflow) or KIND:PATH for
your own data (sts:FILE.jsonl, retrieval:DIR, classification:DIR, clustering:FILE.jsonl); see
docs/eval.md. Task files are checked before any model is loaded. Embeddings are cached, so a
rerun with the same model and settings encodes nothing. `--compare OTHER` evaluates a second
model with the same settings and prints both side by side with Δ = MODEL − OTHER; either spec may
end in `@causal` or `@bidirectional` to pick its attention mode. `--dims` / `--precision` add the
quality-per-byte table: each task on truncated and quantized views of the same embeddings.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer


def eval_command(
    model: str = typer.Argument(..., help="Model: folder, .gguf, alias (`l2v models`), hub id or tiny-<arch>; "
                                "append @causal or @bidirectional to force the attention mode."),
    tasks: Optional[str] = typer.Option(None, "--tasks", "-t", help="Comma-separated: stsb, stsb-dev, scifact, "
                                        "banking77, stackoverflow, or KIND:PATH (sts:FILE.jsonl, retrieval:DIR, "
                                        "classification:DIR, clustering:FILE.jsonl). Default: stsb,scifact,"
                                        "banking77,stackoverflow (none when only --mteb is given)."),
    pooling: str = typer.Option("mean", "--pooling", "-p", help="mean | weighted_mean | last_token | eos | bos."),
    dtype: str = typer.Option("auto", "--dtype",
                              help="auto (fp32 on CPU, bf16 on a GPU) | bfloat16 | float16 | float32."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Texts per forward pass."),
    max_length: int = typer.Option(512, "--max-length", min=1, help="Tokens per text, instruction included."),
    bidirectional: Optional[bool] = typer.Option(None, "--bidirectional/--causal",
                                                 help="Force MODEL's attention mode (default: as saved in its config)."),
    compare: Optional[List[str]] = typer.Option(None, "--compare", help="Another model to evaluate with the same "
                                                "settings and show side by side (Δ = MODEL − OTHER); repeat it "
                                                "for more (one row each)."),
    compare_bidirectional: Optional[bool] = typer.Option(None, "--compare-bidirectional/--compare-causal",
                                                         help="Attention mode of the --compare model (or suffix it "
                                                         "with @causal / @bidirectional)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the results JSON here (atomically). "
                                          "Default: $L2V_CACHE/eval-results/<model>-<time>.json."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Subsample each task to N items (pairs, "
                                        "queries, test texts) for a quick run; not comparable to full scores."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Reuse cached embeddings (~/.cache/l2v/embeddings)."),
    protocol: str = typer.Option("both", "--protocol", help="How texts reach the model: no-prompt (the bare "
                                 "text, as SentenceTransformer(path).encode(texts) sends it), instruction (the "
                                 "task's E5/LLM2Vec instruction on the query side), or both (one column each)."),
    instructions: Optional[bool] = typer.Option(None, "--instructions/--no-instructions", hidden=True,
                                                help="Old spelling: --protocol instruction / --protocol no-prompt."),
    mteb: Optional[str] = typer.Option(None, "--mteb", help="Also run these MTEB tasks (comma-separated MTEB names) "
                                       "through the `mteb` package, if installed; it downloads their data."),
    attn_implementation: str = typer.Option("sdpa", "--attn-implementation",
                                            help="sdpa | eager | flash_attention_2 | auto."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code",
                                           help="Allow model code from the model folder/hub repo."),
    word_tasks: Optional[str] = typer.Option(None, "--word-tasks", help="Word-level probes instead of sentence "
                                             "tasks: comma-separated tag keys of --data, e.g. pos,chunk,ner."),
    data: Optional[str] = typer.Option(None, "--data", help="Word-level data folder: train.jsonl + test.jsonl "
                                       "(one sentence a line: tokens and one tag list per task)."),
    layer: int = typer.Option(-1, "--layer", help="Word tasks: hidden layer to probe (-1 = last, 0 = embeddings)."),
    subword: str = typer.Option("first", "--subword", help="Word tasks: a word's feature from its first "
                                "sub-token or the mean of its sub-tokens (first | mean)."),
    positions: str = typer.Option("same_token,next_token", "--positions", help="Word tasks: read word i's label "
                                  "at its own token (same_token) and/or at the token before (next_token)."),
    train_limit: Optional[int] = typer.Option(None, "--train-limit", min=1, help="Word tasks: a seeded sample "
                                              "of N train sentences (the test set follows --limit)."),
    dims: Optional[str] = typer.Option(None, "--dims", help="Also score truncated embeddings: widths, e.g. "
                                       "64,128,256,full (one row per width in the quality-per-byte table)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="Also score quantized embeddings: "
                                            "float32, float16, int8, uint8, binary, ubinary; P+int8 / P+binary "
                                            "rescores a retrieval's top candidates with the float query, e.g. "
                                            "binary+int8. Comma-separated."),
    rescore_multiplier: int = typer.Option(4, "--rescore-multiplier", min=1, help="P+R precisions: candidates "
                                           "rescored per result kept."),
) -> None:
    """Evaluate MODEL on STS, retrieval, classification and clustering tasks (optionally against OTHER)."""
    from rich.console import Console

    from l2v_cli.cli.eval_compact import print_per_byte
    from l2v_cli.encoding import check_pooling
    from l2v_cli.encoding.dims import parse_dims
    from l2v_cli.encoding.quantize import parse_precisions
    from l2v_cli.errors import L2VError
    from l2v_cli.eval.runner import compare as compare_results
    from l2v_cli.eval.runner import evaluate, load_encoder, parse_model_spec, run_mteb, write_json
    from l2v_cli.eval.tasks import DEFAULT_TASKS, column, parse_protocols, parse_tasks
    from l2v_cli.utils.device import resolve_dtype

    # Everything the user can get wrong, before any model loads.
    check_pooling(pooling)
    resolve_dtype(dtype)
    if dims is not None:
        parse_dims(dims, "--dims")
    if precision is not None:
        parse_precisions(precision)
    spec_a, mode_a = parse_model_spec(model, bidirectional)
    others = [parse_model_spec(c, compare_bidirectional) for c in compare or []]
    spec_b, mode_b = others[0] if len(others) == 1 else (None, None)
    err = Console(stderr=True, highlight=False)
    out = Console(highlight=False) if Console().is_terminal else Console(width=160, highlight=False)
    if not compare and compare_bidirectional is not None:
        raise L2VError("--compare-causal/--compare-bidirectional need --compare OTHER", where="--compare",
                       fix="add --compare MODEL, or drop the flag")
    if output is not None and output.is_dir():
        raise L2VError(f"output {output} is a folder", where="--output", fix="give a file name, e.g. results.json")
    if word_tasks is not None:
        from l2v_cli.cli.word_eval import run_word_eval

        if tasks is not None or mteb or dims is not None or precision is not None:
                raise L2VError("--word-tasks runs word-level probes only", where="--tasks/--mteb/--dims/--precision",
                           fix="run sentence tasks (--tasks/--mteb) and word tasks in two calls")
        report = run_word_eval([(spec_a, mode_a), *others], word_tasks, data, positions=positions, layer=layer,
                               subword=subword, dtype=dtype, batch_size=batch_size, cache=cache,
                               train_limit=train_limit, test_limit=limit, attn_implementation=attn_implementation,
                               trust_remote_code=trust_remote_code, err=err, out=out)
        first = report.get("runs", [report])[0]["model"]
        _save(report, output, _slug(first) + "-words", out)
        return
    if instructions is not None:
        protocol = "instruction" if instructions else "no-prompt"
    protocols = parse_protocols(protocol)
    task_specs = tasks if tasks is not None else (None if mteb else ",".join(DEFAULT_TASKS))
    task_list = parse_tasks(task_specs, limit=limit) if task_specs else []
    for t in task_list:
        t.load()
    if mteb:
        import importlib.util

        if importlib.util.find_spec("mteb") is None:
                raise L2VError("--mteb needs the `mteb` package, which is not installed", where="--mteb",
                           fix="pip install mteb (its task data is downloaded from the Hugging Face Hub)")

    def run_one(spec: str, mode: bool | None) -> dict:
        how = "as saved" if mode is None else ("bidirectional" if mode else "causal")
        err.print(f"[bold]{spec}[/]: loading ({how})…")
        enc, spec_clean, load_s = load_encoder(spec, pooling=pooling, dtype=dtype, max_length=max_length,
                                               bidirectional=mode, attn_implementation=attn_implementation,
                                               trust_remote_code=trust_remote_code)
        res = evaluate(enc, task_list, batch_size=batch_size, protocols=protocols, cache=cache, limit=limit,
                       dims=dims, precisions=precision, rescore_multiplier=rescore_multiplier,
                       show_progress=err.is_terminal, on_start=lambda name: err.print(f"  {name}: running…"),
                       on_task=lambda name, r: err.print("  " + _task_line(name, r)))
        res["load_s"] = round(load_s, 2)
        res["spec"] = spec_clean
        res["model"] = f"{spec_clean} ({res['settings']['attention']})"
        if mteb:
            res["mteb"] = {column(name, p): r for p in protocols
                           for name, r in run_mteb(enc, mteb, instructions=p == "instruction",
                                                   batch_size=batch_size).items()}
        del enc
        import gc

        gc.collect()
        return res

    res_a = run_one(spec_a, mode_a)
    if len(others) > 1:  # several models: one row each, main metrics
        from l2v_cli.stages.evaluate import eval_table, render_table, table_row

        runs = [res_a] + [run_one(s, m) for s, m in others]
        render_table(eval_table(task_list, protocols, [table_row(r["model"], r["spec"], r) for r in runs]), out)
        print_per_byte(out, runs)
        _save({"runs": runs}, output, _slug(res_a["model"]) + f"-vs-{len(others)}", out)
        return
    if spec_b is None:
        report = res_a
        print_results(out, res_a)
        print_per_byte(out, [res_a])
    else:
        res_b = run_one(spec_b, mode_b)
        if res_a["model"] == res_b["model"]:  # same spec and mode: tell them apart in the table
            res_a["model"], res_b["model"] = "A: " + res_a["model"], "B: " + res_b["model"]
        report = {"runs": [res_a, res_b], "delta": compare_results(res_a, res_b),
                  "delta_is": f"{res_a['model']} minus {res_b['model']}"}
        print_comparison(out, res_a, res_b)
        print_per_byte(out, [res_a, res_b])
    _save(report, output, _slug(res_a["model"]) + (f"-vs-{_slug(report['runs'][1]['model'])}" if spec_b else ""),
          out)


def _save(report: dict, output: Optional[Path], slug: str, console) -> None:
    from l2v_cli.eval.runner import write_json

    if output is None:
        from l2v_cli.modeling.aliases import cache_root

        output = cache_root() / "eval-results" / f"{slug}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path = write_json(output, report)
    console.print(f"results → {path}", soft_wrap=True)


def _slug(label: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(label.split(" (")[0]).name or "model").strip("_")[:60] + \
        ("-bidir" if "(bidirectional)" in label else "-causal" if "(causal)" in label else "")


def _fmt(v) -> str:
    return "-" if v is None or v != v else f"{v:.2f}"


def _task_line(name: str, r: dict) -> str:
    m = r["main_metric"]
    return (f"{name}: {m} {_fmt(r.get(m))}  (n={r.get('n')}, {r.get('time_s', 0):.1f} s, "
            f"encoded {r.get('encoded', 0)}, cached {r.get('cached', 0)})")


def _metric_rows(r: dict) -> list[tuple[str, float, float | None]]:
    """(metric, value, std or None) rows of one task result, main metric first."""
    from l2v_cli.eval.runner import numeric_metrics

    nums = numeric_metrics(r)
    names = [m for m in nums if not m.endswith("_std")]
    names.sort(key=lambda m: m != r.get("main_metric"))
    return [(m, nums[m], nums.get(f"{m}_std")) for m in names]


def print_results(console, res: dict) -> None:
    from rich.table import Table

    from l2v_cli.eval.runner import columns
    from l2v_cli.eval.tasks import PROTOCOLS

    s = res["settings"]
    title = f"{res['model']} — pooling={s['pooling']}, dtype={s['dtype']}, max_length={s['max_length']}"
    title += ", protocols: " + " + ".join(PROTOCOLS[p] for p in s["protocols"])
    if s["limit"]:
        title += f", limit={s['limit']}"
    table = Table(title=title, title_justify="left", header_style="bold")
    for col, kw in (("task", dict(style="cyan")), ("metric", {}), ("score", dict(justify="right")),
                    ("n", dict(justify="right")), ("time (s)", dict(justify="right")),
                    ("encoded/cached", dict(justify="right"))):
        table.add_column(col, **kw)
    mains = []
    for name, r in columns(res).items():
        for i, (m, v, std) in enumerate(_metric_rows(r)):
            cell = _fmt(v) + (f" ± {std:.2f}" if std is not None else "")
            first = i == 0
            table.add_row(name if first else "", m, cell, str(r.get("n", "")) if first else "",
                          f"{r.get('time_s', 0):.1f}" if first else "",
                          f"{r.get('encoded', 0)}/{r.get('cached', 0)}" if first else "")
        mains.append(r.get(r.get("main_metric")))
    if len(mains) > 1:
        table.add_row("average", "main scores", _fmt(_mean(mains)), "", "", "", style="bold")
    console.print(table)
    for name, r in (res.get("mteb") or {}).items():
        console.print(f"mteb {name}: {r['main_metric']} {_fmt(r['main_score'])} ({r['time_s']:.1f} s)")


def print_comparison(console, a: dict, b: dict) -> None:
    from rich.table import Table

    from l2v_cli.eval.runner import columns

    table = Table(title=f"A = {a['model']}   vs   B = {b['model']}", caption="Δ = A − B", title_justify="left",
                  header_style="bold")
    table.add_column("task", style="cyan")
    table.add_column("metric")
    table.add_column(a["model"], justify="right")
    table.add_column(b["model"], justify="right")
    table.add_column("Δ (A − B)", justify="right")
    mains_a, mains_b = [], []
    cols_b = columns(b)
    for name, ra in columns(a).items():
        rb = cols_b.get(name, {})
        for i, (m, va, _) in enumerate(_metric_rows(ra)):
            vb = rb.get(m)
            table.add_row(name if i == 0 else "", m, _fmt(va), _fmt(vb), _delta(va, vb))
        mains_a.append(ra.get(ra["main_metric"]))
        mains_b.append(rb.get(ra["main_metric"]))
    if len(mains_a) > 1:
        ma, mb = _mean(mains_a), _mean(mains_b)
        table.add_row("average", "main scores", _fmt(ma), _fmt(mb), _delta(ma, mb), style="bold")
    for name in sorted(set(a.get("mteb") or {}) | set(b.get("mteb") or {})):
        va = (a.get("mteb") or {}).get(name, {}).get("main_score")
        vb = (b.get("mteb") or {}).get(name, {}).get("main_score")
        table.add_row(f"mteb:{name}", "main_score", _fmt(va), _fmt(vb), _delta(va, vb))
    console.print(table)


def _delta(va, vb):
    from rich.text import Text

    if va is None or vb is None or va != va or vb != vb:
        return Text("-")
    d = va - vb
    return Text(f"{d:+.2f}", style="green" if d > 0 else "red" if d < 0 else "")


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None and v == v]
    return sum(vals) / len(vals) if vals and len(vals) == len(values) else None


def register(app) -> None:
    app.command("eval", no_args_is_help=True)(eval_command)
