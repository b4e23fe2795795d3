"""`l2v eval MODEL --word-tasks pos,chunk,ner --data DIR [--compare OTHER ...]`: the word-level
probes for one or more models, one table (rows: model × label position), one JSON."""

from __future__ import annotations


def run_word_eval(specs: list[tuple[str, bool | None]], word_tasks: str, data: str | None, *, positions: str,
                  layer: int, subword: str, dtype: str, batch_size: int, cache: bool, train_limit: int | None,
                  test_limit: int | None, attn_implementation: str, trust_remote_code: bool, err, out) -> dict:
    from l2v_cli.errors import L2VError
    from l2v_cli.eval.runner import load_encoder
    from l2v_cli.eval.word import POSITIONS, evaluate_words, load_word_data, parse_word_tasks

    if data is None:
        raise L2VError("--word-tasks needs --data DIR (train.jsonl + test.jsonl, CoNLL-style)", where="--data",
                       fix="e.g. --data path/to/conll2003 (see docs/eval.md, 'Word-level probes')")
    tasks = parse_word_tasks(word_tasks)
    pos = [p.strip() for p in positions.split(",") if p.strip()]
    bad = [p for p in pos if p not in POSITIONS]
    if bad or not pos:
        raise L2VError(f"unknown label position {bad[0] if bad else positions!r}", where="--positions",
                       fix="same_token, next_token or both (comma-separated)")
    wd = load_word_data(data, tasks, train_limit=train_limit, test_limit=test_limit)  # checked before any model
    err.print(f"word-level data: {wd.path} — {len(wd.train)} train / {len(wd.test)} test sentences, "
              f"tasks {', '.join(tasks)}")
    runs = []
    for spec, mode in specs:
        how = "as saved" if mode is None else ("bidirectional" if mode else "causal")
        err.print(f"[bold]{spec}[/]: loading ({how})…")
        enc, clean, load_s = load_encoder(spec, dtype=dtype, max_length=1 << 20, bidirectional=mode,
                                          attn_implementation=attn_implementation,
                                          trust_remote_code=trust_remote_code)
        res = evaluate_words(enc, tasks, wd, positions=pos, layer=layer, subword=subword, batch_size=batch_size,
                             cache=cache, show_progress=err.is_terminal)
        res.update(spec=clean, load_s=round(load_s, 2),
                   model=f"{clean} ({res['settings']['attention']})")
        f = res["features"]
        err.print(f"  features {f['seconds']:.0f} s (train cached: {f['train']['cached']}, test cached: "
                  f"{f['test']['cached']}), probes {res['probe_s']:.0f} s")
        runs.append(res)
        del enc
    print_word_table(out, runs)
    return runs[0] if len(runs) == 1 else {"runs": runs}


def print_word_table(console, runs: list[dict]) -> None:
    from rich.table import Table

    s = runs[0]["settings"]
    tasks = list(runs[0]["tasks"])
    table = Table(title=f"Word-level probes — layer {s['layer']}, sub-word {s['subword']}, "
                  f"{s['train_sentences']} train / {s['test_sentences']} test sentences",
                  title_justify="left", header_style="bold",
                  caption="accuracy ×100 (ner: entity-level micro F1 ×100, IOB2)", caption_justify="left")
    table.add_column("model")
    table.add_column("label at")
    for t in tasks:
        table.add_column(t, justify="right")
    for r in runs:
        for i, p in enumerate(r["settings"]["positions"]):
            cells = [f"{r['tasks'][t][p][r['tasks'][t]['main_metric']]:.2f}" for t in tasks]
            table.add_row(r["model"] if i == 0 else "", p, *cells)
    console.print(table)
