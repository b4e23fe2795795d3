"""The `l2v` console script: a Typer app whose commands live one per module in this folder.

Every command runs inside `run()`, which turns an `L2VError` (or any unexpected exception)
into one line on stderr and a non-zero exit; `--debug` (or L2V_DEBUG=1) shows the traceback.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from l2v_cli.errors import L2VError

app = typer.Typer(
    name="l2v",
    help="Turn any decoder-only LLM into a text encoder (LLM2Vec): bidirectional attention, "
    "MNTP, SimCSE and supervised contrastive training, export to sentence-transformers.",
    no_args_is_help=True,
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module has `register(app)`; heavy imports (torch, transformers) stay inside the commands
# so `l2v --help` is instant.
COMMAND_MODULES = ["models_cmd", "recipes_cmd", "bidir_cmd", "encode_cmd", "train_cmd", "export_cmd", "eval_cmd", "convert_cmd"]


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
) -> None:
    if version:
        from l2v_cli import __version__

        print(f"l2v {__version__}")
        raise typer.Exit()
    if debug:
        os.environ["L2V_DEBUG"] = "1"


for _name in COMMAND_MODULES:
    importlib.import_module(f"l2v_cli.cli.{_name}").register(app)


def fail(message: str, code: int = 2) -> None:
    print(f"l2v: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def run(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:
        os.environ["L2V_DEBUG"] = "1"
    debug = os.environ.get("L2V_DEBUG") == "1"
    try:
        app(args=argv, prog_name="l2v", standalone_mode=True)
    except SystemExit:
        raise
    except L2VError as e:
        if debug:
            raise
        fail(e.line())
    except KeyboardInterrupt:
        fail("interrupted", code=130)
    except Exception as e:  # an unexpected failure still gets one line, with the way to learn more
        if debug:
            raise
        fail(f"{type(e).__name__}: {e} (rerun with --debug for the traceback)", code=1)
