"""`l2v enable-bidir MODEL -o OUT`: write a bidirectional copy of MODEL, proven by a probe."""

from __future__ import annotations

from pathlib import Path

import typer

_PROBE_HELP = {
    "single_no_padding": "batch of one, no padding: changing the last token changes the first token",
    "padded_right": "right-padded batch: same states as unpadded, padding ignored, sees the last token",
    "padded_left": "left-padded batch: same states as unpadded, padding ignored, sees the last token",
}


def enable_bidir_cmd(
    model: str = typer.Argument(..., help="Model folder, .gguf file, alias (`l2v models`), tiny-<arch> or hub id org/name."),
    out: Path = typer.Option(..., "-o", "--out", help="Folder to write (must not exist unless --overwrite)."),
    attn_implementation: str = typer.Option(
        "auto", "--attn-implementation", help="Attention kernel: auto (the model family's, eager if it fails the "
        "probe), sdpa, eager or flash_attention_2."),
    dtype: str = typer.Option(
        "original", "--dtype", help="Saved weight dtype: original (what the source declares; float32 for "
        "GGUF/tiny), float32, bfloat16 or float16."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Probe bidirectionality in memory and "
                                "after a plain reload of the written folder (default on)."),
    sink: str = typer.Option(
        "auto", "--sink", help="Attention sink the tokenizer puts before every text so bare text embeds well: "
        "auto (EOS + a lone space token), none, or a literal text."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists (only once the new one is complete)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow models that need their repo's Python code."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow pickle (.bin) weights; only for sources you trust."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON instead of a table."),
) -> None:
    """Make MODEL's attention bidirectional and save it (LM head kept for MNTP), verified by a probe."""
    from l2v_cli.stages.enable_bidir import enable_bidir

    report = enable_bidir(model, out, attn_implementation=attn_implementation, verify=verify, dtype=dtype,
                          overwrite=overwrite, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
                          sink=sink)
    if json_out:
        import json

        print(json.dumps(report.to_dict(), indent=2))
        return
    print_report(report)


def print_report(report) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from l2v_cli.modeling.aliases import format_params

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    if report.probe is not None:
        table = Table(title="bidirectional probe", box=None, header_style="bold", title_justify="left")
        table.add_column("check", style="cyan", no_wrap=True)
        table.add_column(f"in memory ({report.probe.attn_implementation})")
        rp = report.reload_probe
        if rp is not None:
            table.add_column(f"plain reload ({rp.attn_implementation})")
        table.add_column("what it shows")
        for check, ok in report.probe.checks.items():
            cells = [Text(check), _mark(ok)]
            if rp is not None:
                cells.append(_mark(rp.checks.get(check)))
            cells.append(Text(_PROBE_HELP.get(check, "")))
            table.add_row(*cells)
        console.print(table)
    else:
        console.print("[yellow]not verified (--no-verify): bidirectionality was not probed[/yellow]")
    src = report.source
    origin = src.get("origin", "")
    console.print(Text(
        f"wrote {report.out}  ({report.architecture}, {format_params(report.params)} params, "
        f"attn={report.attn_implementation}, dtype={report.dtype}, from {src.get('kind')} {origin}) "
        f"in {report.timings.get('total_s', 0):.1f}s"))


def _mark(ok):
    from rich.text import Text

    if ok is None:
        return Text("-")
    return Text("pass", style="green") if ok else Text("FAIL", style="bold red")


def register(app: typer.Typer) -> None:
    from l2v_cli.stages import registry

    app.command(registry.BIDIR.name)(enable_bidir_cmd)
