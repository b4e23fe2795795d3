"""Spec: the package's layering. `cli/` is the outermost layer (nothing below imports it), there are
no import circles (counting imports inside functions too), and stage names are spelled only in the
stage registry."""

from __future__ import annotations

import ast
from pathlib import Path

import l2v_cli

PKG = Path(l2v_cli.__file__).parent


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def imports_of(path: Path, name: str, known: set[str]) -> list[tuple[str, int]]:
    """(imported l2v_cli module, line) for every import in the file: module level, inside functions,
    inside `if TYPE_CHECKING` — all of them."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import sub` imports the submodule `pkg.sub` when there is one
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        out += [(t, node.lineno) for t in targets if t == "l2v_cli" or t.startswith("l2v_cli.")]
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for target, _ in imports_of(path, name, known):
            while target not in known and "." in target:  # `import a.b.c` of a non-module attribute
                target = target.rpartition(".")[0]
            if target != name:
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_circle_it_is_shown():
    """Control: the checker reports a circle of three and ignores a chain."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_circles_including_function_local_imports():
    graph = import_graph()
    assert len(graph) > 60 and graph["l2v_cli.stages.convert"], "the walk found the package"
    assert cycles(graph) == []


def test_nothing_below_the_cli_imports_it():
    mods, offenders = modules(), []
    known = set(mods)
    for name, path in mods.items():
        # the CLI itself, and `python -m l2v_cli` (the console entry point: the outermost layer too)
        if name.startswith("l2v_cli.cli") or name == "l2v_cli.__main__":
            continue
        offenders += [f"{name}:{line} imports {t}" for t, line in imports_of(path, name, known)
                      if t == "l2v_cli.cli" or t.startswith("l2v_cli.cli.")]
    assert offenders == []


def test_convert_runs_from_python_without_typer_loaded():
    """The Python API does not drag in the CLI: a fresh interpreter plans a run, typer never imported."""
    import subprocess
    import sys

    code = ("import sys\nfrom l2v_cli.config import load_recipe\nfrom l2v_cli.stages.convert import convert\n"
            "convert('tiny-llama', load_recipe('smoke'), sys.argv[1], dry_run=True, echo=lambda m: None)\n"
            "print('typer' in sys.modules, 'l2v_cli.cli' in sys.modules)")
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = subprocess.run([sys.executable, "-c", code, d + "/run"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split() == ["False", "False"]


def _string_constants(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value, node.lineno


def test_stage_names_are_spelled_only_in_the_registry():
    """A string literal equal to a stage name appears in stages/registry.py and nowhere else in the
    package. ("export" and "eval" are also section and command words, so the check covers the
    names that are only stage names.)"""
    from l2v_cli.stages import registry

    names = {s.name for s in registry.STAGES if s.name != s.section}
    assert names == {"enable-bidir", "train-mntp", "train-simcse", "train-supervised"}
    found = []
    for name, path in modules().items():
        if name == "l2v_cli.stages.registry":
            continue
        found += [f"{name}:{line} {value!r}" for value, line in _string_constants(path) if value in names]
    assert found == []
    # control: the registry itself does spell them, so the scan sees literals
    assert names <= {v for v, _ in _string_constants(PKG / "stages" / "registry.py")}


def test_every_subpackage_is_in_the_wheel():
    """pyproject.toml lists packages by hand: a new folder missing there is absent from a normal
    (non-editable) install."""
    import tomllib

    listed = set(tomllib.loads((PKG.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {module_name(p.parent / "__init__.py") for p in PKG.rglob("__init__.py")}
    assert found - listed == set()
