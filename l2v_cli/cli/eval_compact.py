"""The quality-per-byte table of `l2v eval --dims ... --precision ...`: one row per model, task,
width and precision — score, bytes per stored vector, share of the full-width float32 score."""

from __future__ import annotations


def print_per_byte(console, runs: list[dict]) -> None:
    """Print the table of every run that has `per_byte` rows (nothing when none has)."""
    from rich.table import Table

    runs = [r for r in runs if r.get("per_byte")]
    if not runs:
        return
    several = len(runs) > 1
    table = Table(title="quality per byte (share = score / the same model's full-width float32 score)",
                  title_justify="left", header_style="bold")
    if several:
        table.add_column("model", style="cyan")
    for col, kw in (("task", dict(style="cyan")), ("metric", {}), ("dims", dict(justify="right")),
                    ("precision", {}), ("bytes/vector", dict(justify="right")), ("score", dict(justify="right")),
                    ("share", dict(justify="right"))):
        table.add_column(col, **kw)
    for run in runs:
        trained = run.get("trained_dims")
        label = run["model"] + (f" [trained dims {', '.join(map(str, trained))}]" if trained else "")
        previous = None
        for row in run["per_byte"]:
            name = f"{row['task']} ({row['protocol'].replace('_', ' ')})"
            first = (label, name) != previous
            cells = [name if first else "", row["metric"] if first else "", row["dim_label"] if row["dim_label"] == "full"
                     else str(row["dim"]), row["precision"], str(row["bytes"]), _num(row["score"]),
                     "-" if row["share"] is None else f"{100 * row['share']:.1f} %"]
            table.add_row(*(([label if first else ""] if several else []) + cells))
            previous = (label, name)
    console.print(table)


def _num(v) -> str:
    return "-" if v is None or v != v else f"{v:.2f}"
