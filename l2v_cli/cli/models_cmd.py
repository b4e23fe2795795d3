"""`l2v models`: the model aliases, their family defaults and whether they work offline."""

from __future__ import annotations

import typer


def models_cmd(
    json_out: bool = typer.Option(False, "--json", help="Print the aliases as JSON."),
    tiny: bool = typer.Option(True, "--tiny/--no-tiny", help="Include the tiny-<arch> test models."),
) -> None:
    """List model aliases (usable wherever MODEL is): hub id, family and its MNTP defaults, size, offline copy."""
    from l2v_cli.modeling.aliases import aliases_table, format_params
    from l2v_cli.modeling.families import match

    rows = [r for r in aliases_table() if tiny or not r["alias"].startswith("tiny-")]
    for r in rows:  # the family's defaults: what `auto` recipe values take for this alias
        f = match(r["family"], "configs/models.yaml").family
        r.update(mask_token=f.mask_token, mask_probability=f.mask_probability, mask_strategy=f.mask_strategy,
                 attn_implementation=f.attn_implementation, defaults_from=f"{f.name} family ({f.source})")
    if json_out:
        import json

        print(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    table = Table(box=None, header_style="bold")
    table.add_column("alias", style="cyan", no_wrap=True)
    table.add_column("hub id", no_wrap=True)
    table.add_column("family")
    table.add_column("params", justify="right")
    table.add_column("MNTP mask (family default)", justify="center")
    table.add_column("attn")
    table.add_column("licence")
    table.add_column("offline")
    for r in rows:
        off = r["offline"]
        style = "green" if r["offline_installed"] else ("dim" if off == "hub only" else "yellow")
        mask = f"{r['mask_token']!r} {r['mask_probability']:g} {r['mask_strategy']}"
        table.add_row(Text(r["alias"]), Text(r["hub_id"] or "-"), Text(r["family"]),
                      Text(format_params(r["params"])), Text(mask), Text(r["attn_implementation"]),
                      Text(r["licence"]), Text(off, style=style))
    console.print(table)
    console.print(Text("MODEL may also be a local folder, a .gguf file or a hub id org/name. "
                       "Offline copies are GGUF files, dequantised to float32 on first use.", style="dim"))


def register(app: typer.Typer) -> None:
    app.command("models")(models_cmd)
