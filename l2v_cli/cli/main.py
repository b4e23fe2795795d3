"""The `l2v` console script: a Typer app whose commands live one per module in this folder.

Every command runs inside `run()`, which turns an `L2VError` (or any unexpected exception)
into one line on stderr and a non-zero exit; `--debug` (or L2V_DEBUG=1) shows the traceback.
"""

from __future__ import annotations

import errno
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
COMMAND_MODULES = ["models_cmd", "recipes_cmd", "bidir_cmd", "encode_cmd", "train_cmd", "export_cmd", "eval_cmd", "mine_cmd", "convert_cmd",
                   "doctor_cmd", "plan_cmd"]


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
        # standalone_mode=False: a bad option value (a click usage error) is one line too
        code = app(args=argv, prog_name="l2v", standalone_mode=False)
    except SystemExit:
        raise
    except L2VError as e:
        if debug:
            raise
        fail(e.line())
    except KeyboardInterrupt:
        fail("interrupted", code=130)
    except Exception as e:
        kinds = {c.__name__ for c in type(e).__mro__}  # click's classes (typer vendors its own copy)
        if "NoArgsIsHelpError" in kinds:  # `l2v encode` alone: typer has printed its help
            raise SystemExit(2) from None
        if "UsageError" in kinds:  # bad option value, missing argument, unknown command
            ctx = getattr(e, "ctx", None)
            cmd = ctx.command_path if ctx is not None else "l2v"
            fail(L2VError(" ".join(e.format_message().split()), where=cmd, fix=f"see `{cmd} --help`").line())
        if "ClickException" in kinds:
            fail(" ".join(e.format_message().split()), code=getattr(e, "exit_code", 1) or 1)
        if debug:
            raise
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):  # a write ran out of space
            fail(L2VError(f"disk full while writing{' ' + str(e.filename) if e.filename else ''}",
                          fix="free space on that disk (or write somewhere else), then rerun").line())
        # an unexpected failure still gets one line, with the way to learn more
        fail(f"{type(e).__name__}: {e} (rerun with --debug for the traceback)", code=1)
    if isinstance(code, int) and code:  # typer.Exit(code) in non-standalone mode
        raise SystemExit(code)
