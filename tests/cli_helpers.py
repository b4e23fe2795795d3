"""Shared by the CLI spec files: run `l2v` in this process and read its exit code and stderr."""

from l2v_cli.cli.main import run


def run_in_process(argv: list[str], capsys) -> tuple[int, str]:
    """(exit code, stderr) of `l2v ARGV`; SystemExit(None) counts as success, like the shell."""
    capsys.readouterr()
    try:
        run(argv)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return code, capsys.readouterr().err
