"""Spec: every `l2v` command line in README.md, docs/*.md and the recipes' comments works as written.

Each one is extracted and checked against the real CLI:
  * cheap commands run for real: `l2v models`, `l2v recipes ...`, `l2v plan ...`, `--help`, and
    `l2v convert ...` as `--dry-run` (no weights: the plan, the family's settings, the launch commands);
  * every other command line is parsed by the CLI's own parser without running: the command exists,
    every option exists and takes the value given, required arguments are there;
  * a usage synopsis (`l2v eval MODEL [--tasks ...]`) and a fragment in prose (`l2v encode
    --instruction`) name a command and options that must exist;
  * the rows of the bad-input catalogue in docs/hardening.md are the cases tests/test_bad_inputs.py runs.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.main import get_command

from cli_helpers import run_in_process
from l2v_cli.cli.main import app

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
CLICK = get_command(app)
RUN_FOR_REAL = {"models", "recipes", "plan"}

_CMD = re.compile(r"(?<![\w/.`-])l2v (?=-|[a-z])")


def _strip_comment(line: str) -> str:
    """A shell comment outside quotes ends the command."""
    out, quote = [], None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            break
        out.append(ch)
    return "".join(out).strip()


def extract() -> list[tuple[str, str, str]]:
    """(where, kind, command) for every l2v command line; kind: block | inline | table | recipe."""
    found = []
    for doc in DOCS:
        lines, in_block, fence_lang = doc.read_text().splitlines(), False, ""
        i = 0
        while i < len(lines):
            line = lines[i]
            where = f"{doc.relative_to(ROOT)}:{i + 1}"
            if line.startswith("```"):
                in_block, fence_lang = (not in_block), line[3:].strip()
                i += 1
                continue
            if in_block and fence_lang in ("", "bash", "sh", "shell", "text", "console"):
                while line.endswith("\\") and i + 1 < len(lines):  # continuation lines
                    i += 1
                    line = line[:-1] + " " + lines[i].strip()
                m = _CMD.search(line)
                # in shell blocks a command may follow `srun` or `# =`; in text/untagged blocks (transcripts,
                # output) only a line that starts with one ("$ l2v ...") is a command
                shell = fence_lang in ("bash", "sh", "shell")
                if m and (shell or line.lstrip().removeprefix("$ ").startswith("l2v ")):
                    found.append((where, "block", _strip_comment(line[m.start():])))
            elif not in_block:
                row = re.match(r"\| `([\w-]+)` \| `(l2v [^`]*)` \|", line)
                if row and doc.name == "hardening.md":  # the bad-input catalogue: "id: command"
                    found.append((where, "table", f"{row.group(1)}: {row.group(2)}"))
                else:
                    found += [(where, "inline", span) for span in re.findall(r"`(l2v [^`]*)`", line)]
            i += 1
    for recipe in RECIPES:
        for n, line in enumerate(recipe.read_text().splitlines(), 1):
            if line.lstrip().startswith("#") and _CMD.search(line):
                found.append((f"{recipe.relative_to(ROOT)}:{n}", "recipe", _strip_comment(line[_CMD.search(line).start():])))
    return found


COMMANDS = extract()


def _args(command: str) -> list[str]:
    return shlex.split(command)[1:]


def _subcommand(args: list[str]):
    """The click command and its arguments (after group options and subgroups)."""
    cmd, rest = CLICK, list(args)
    while hasattr(cmd, "commands"):
        rest = [a for a in rest if a not in ("--debug",)]
        if not rest or rest[0].startswith("-"):
            return cmd, rest
        name = rest.pop(0)
        if name == "...":  # `l2v --debug ...`: any command
            return cmd, rest
        if name.endswith("*"):  # `l2v train-*`: a family of commands, at least one must exist
            assert any(c.startswith(name[:-1]) for c in cmd.commands), f"no command {name!r}"
            return cmd, rest
        assert name in cmd.commands, f"no command {name!r}"
        cmd = cmd.commands[name]
    return cmd, rest


def _options(cmd) -> set[str]:
    return {o for p in cmd.params for o in (*p.opts, *getattr(p, "secondary_opts", []))} | {"--help"}


def _named_options_exist(command: str) -> None:
    cmd, rest = _subcommand([a for a in _args(command) if a not in ("...", "|")])
    flags = {re.split(r"[=\]]", a.lstrip("["))[0] for a in rest if a.lstrip("[").startswith("-")}
    assert flags <= _options(cmd), f"unknown options {sorted(flags - _options(cmd))}"


def _parses(command: str) -> None:
    cmd, rest = _subcommand(_args(command))
    ctx = cmd.make_context(cmd.name, rest, resilient_parsing=False)  # raises on a bad option or value
    assert ctx.params is not None


def test_the_docs_have_commands_to_check():
    kinds = {k for _, k, _ in COMMANDS}
    assert {"block", "inline", "table", "recipe"} <= kinds and len(COMMANDS) > 80


@pytest.mark.parametrize("where,kind,command", [c for c in COMMANDS if c[1] == "table"],
                         ids=[c[0] for c in COMMANDS if c[1] == "table"])
def test_catalogue_rows_are_bad_input_cases(where, kind, command):
    """A row of the catalogue is a case tests/test_bad_inputs.py runs, with the same command."""
    import test_bad_inputs

    case_id, _, line = command.partition(": ")
    cases = {c.id: c for c in test_bad_inputs.CASES}
    assert case_id in cases, where
    assert tuple(_args(line)) == cases[case_id].argv, where


def _example_folders(where: Path) -> None:
    """The example folders the docs name (`l2v plan ./my-model-folder`): a model folder is its
    config.json for the planner, so the tiny Llama's stands in."""
    from l2v_cli.modeling.tiny import tiny_config

    folder = where / "my-model-folder"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(tiny_config("llama")[0].to_json_string())


def _check(command: str, tmp_path: Path, capsys, monkeypatch) -> None:
    args = _args(command)
    synopsis = any(a.startswith("[") or a in ("...", "|") for a in args) or any(
        a.isupper() and a.isalpha() and len(a) > 1 for a in args)  # MODEL, PATH, NAME: placeholders
    if synopsis:
        _named_options_exist(command)
        return
    cmd, rest = _subcommand(args)
    if "--help" in rest or cmd.name in RUN_FOR_REAL or cmd.name == "convert":
        if cmd.name == "convert" and "--dry-run" not in rest and "--print-config" not in rest:
            args = [*args, "--dry-run"]
        monkeypatch.chdir(tmp_path)
        _example_folders(tmp_path)
        code, err = run_in_process(args, capsys)
        assert code == 0, f"{command}\n{err[-2000:]}"
        return
    _parses(command)


@pytest.mark.parametrize("where,kind,command", [c for c in COMMANDS if c[1] != "table"],
                         ids=[c[0] for c in COMMANDS if c[1] != "table"])
def test_documented_command_works(where, kind, command, tmp_path, capsys, monkeypatch):
    if kind == "inline" and len(_args(command)) <= 3 and not any(a.startswith("-") for a in _args(command)[1:]):
        _subcommand(_args(command))  # `l2v export`, `l2v enable-bidir`: the command exists
        return
    if kind == "inline" and any(a.startswith("-") for a in _args(command)) and not _looks_complete(command):
        _named_options_exist(command)  # a fragment in prose: `l2v encode --instruction`
        return
    _check(command, tmp_path, capsys, monkeypatch)


def _looks_complete(command: str) -> bool:
    """An inline command with its arguments (`l2v convert smollm2-135m --recipe cpu-demo -o runs/x`)."""
    cmd, rest = _subcommand(_args(command))
    try:
        cmd.make_context(cmd.name, list(rest), resilient_parsing=False)
        return True
    except Exception:
        return False


def test_a_wrong_command_is_caught():
    """Control: the checks fail on a renamed option, an unknown command and a bad value."""
    with pytest.raises(AssertionError, match="unknown options"):
        _named_options_exist("l2v encode MODEL [--normalise]")
    with pytest.raises(AssertionError, match="no command"):
        _subcommand(_args("l2v encdoe x"))
    with pytest.raises(Exception):
        _parses("l2v export runs/x -o runs/y --max-seq-length zero")
