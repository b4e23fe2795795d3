"""Load a recipe: shipped name or YAML path, plus `key.sub=value` overrides, into a `Recipe`.

Errors point at the source: `file:line` for keys from a YAML file, the override text for keys
set on the command line.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from l2v_cli.config.schema import FieldDoc, Recipe, build, schema_fields, validate
from l2v_cli.errors import L2VError, did_you_mean

RECIPES_PACKAGE = "l2v_cli.recipes"


def _shipped() -> dict[str, Any]:
    """name -> Traversable of every recipes/<name>.yaml."""
    root = importlib.resources.files(RECIPES_PACKAGE)
    return {p.name.rsplit(".", 1)[0]: p for p in root.iterdir() if p.name.endswith(".yaml")}


def list_recipes() -> list[tuple[str, str]]:
    """(name, description) of every shipped recipe, sorted by name."""
    out = []
    for name, p in sorted(_shipped().items()):
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            data = {}
        out.append((name, str(data.get("description", "")) if isinstance(data, dict) else ""))
    return out


def _parse_yaml(text: str, source: str) -> tuple[dict, dict[str, int]]:
    """The mapping in `text` and the line of every key path (for error messages)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        line = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        if "could not determine a constructor" in problem:  # !!python/... tags: never executed
            raise L2VError(
                f"unsupported YAML tag: {problem.split('tag', 1)[-1].strip()} (recipes are loaded "
                "with yaml.safe_load: plain data only, no Python objects)", line, "remove the tag"
            ) from None
        raise L2VError(
            f"malformed YAML: {problem}", line, "fix the YAML syntax at that line"
        ) from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise L2VError(
            f"a recipe must be a YAML mapping of keys, got {type(data).__name__}",
            f"{source}:1",
            "start the file with `name: ...` / `stages: [...]` style keys",
        )
    lines: dict[str, int] = {}
    _key_lines(node, "", source, lines)
    return _unshare(data), lines


def _unshare(x: Any) -> Any:
    """Copy dicts/lists so YAML anchors (`train: *tiny`) don't alias: an override of
    mntp.train.max_steps must not change simcse.train too. (deepcopy would keep the aliasing.)"""
    if isinstance(x, dict):
        return {k: _unshare(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_unshare(v) for v in x]
    return x


def _key_lines(node: Any, prefix: str, source: str, lines: dict[str, int]) -> None:
    if not isinstance(node, yaml.MappingNode):
        return
    for k, v in node.value:
        path = f"{prefix}.{k.value}" if prefix else str(k.value)
        if path in lines:  # safe_load would silently keep the last one
            raise L2VError(
                f"duplicate key '{path}'",
                f"{source}:{k.start_mark.line + 1}",
                f"keep one '{path}' (the other is on line {lines[path]})",
            )
        lines[path] = k.start_mark.line + 1
        _key_lines(v, path, source, lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], value parsed as a YAML scalar or flow list/map)."""
    key, eq, raw = text.partition("=")
    keys = key.strip().split(".")
    if not eq or not all(k.strip() for k in keys):
        raise L2VError(
            f"malformed override {text!r}",
            "command line",
            "write overrides as key.sub=value, e.g. mntp.train.max_steps=50",
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise L2VError(
            f"cannot parse the value of override {text!r}: {problem}",
            "command line",
            "quote strings with special characters; lists are [a, b]",
        ) from None
    return [k.strip() for k in keys], value


def _apply(data: dict, keys: list[str], value: Any, text: str) -> None:
    node = data
    for i, k in enumerate(keys[:-1]):
        if node.get(k) is None:
            node[k] = {}
        if not isinstance(node[k], dict):
            path = ".".join(keys[: i + 1])
            raise L2VError(
                f"override {text!r} goes inside '{path}', which is not a section",
                "command line",
                f"set {path}=VALUE directly",
            )
        node = node[k]
    node[keys[-1]] = value


def _resolve(name_or_path: str) -> tuple[str, str, str]:
    """(text, source shown in errors, default name)."""
    p = Path(name_or_path)
    shipped = _shipped()
    if name_or_path.endswith((".yaml", ".yml")) or p.exists():
        if not p.is_file():
            fix = "check the path"
            if p.stem in shipped and len(p.parts) == 1:
                fix = f"to use the shipped recipe, pass the name '{p.stem}'"
            raise L2VError(f"recipe file not found: {name_or_path}", str(p.absolute()), fix)
        return p.read_text(encoding="utf-8"), str(p), p.stem
    if name_or_path not in shipped:
        raise L2VError(
            f"unknown recipe '{name_or_path}'",
            "shipped recipes: " + ", ".join(sorted(shipped)),
            did_you_mean(name_or_path, shipped) + " (or give a path to a .yaml file)",
        )
    text = shipped[name_or_path].read_text(encoding="utf-8")
    return text, f"recipes/{name_or_path}.yaml", name_or_path


def load_recipe(name_or_path: str, overrides: Iterable[str] = ()) -> Recipe:
    """Shipped recipe name or YAML path, plus `key.sub=value` overrides -> validated Recipe."""
    return load_recipe_with_origin(name_or_path, overrides)[0]


def load_recipe_with_origin(name_or_path: str, overrides: Iterable[str] = ()) -> tuple[Recipe, Callable]:
    """`load_recipe`, plus origin(key) -> where that key was set: "recipes/x.yaml:12", "override 'k=v'",
    or None when neither set it (the schema default). Family defaults use it to name their sources."""
    text, source, default_name = _resolve(str(name_or_path))
    data, lines = _parse_yaml(text, source)
    data.setdefault("name", default_name)
    origin: dict[str, str] = {}
    for ov in overrides:
        keys, value = parse_override(ov)
        _apply(data, keys, value, ov)
        origin[".".join(keys)] = f"override {ov!r}"

    def locate(path: str) -> str | None:
        # the longest set prefix wins: `mntp.train={max_steps: 0}` explains mntp.train.max_steps
        parts = path.replace("[", ".[").split(".")
        below = [o for k, o in origin.items() if k.startswith(path + ".")]
        if below and path not in lines:  # a key only an override set (e.g. a misspelt section)
            return below[0]
        for n in range(len(parts), 0, -1):
            key = ".".join(parts[:n]).replace(".[", "[")
            if key in origin:
                return origin[key]
            if key in lines:
                return f"{source}:{lines[key]}"
        return source

    def set_at(path: str) -> str | None:
        parts = path.split(".")
        for n in range(len(parts), 0, -1):  # an override of the key or of a section above it
            if ".".join(parts[:n]) in origin:
                return origin[".".join(parts[:n])]
        return f"{source}:{lines[path]}" if path in lines else None

    return validate(build(Recipe(), data, "", locate), locate), set_at


def recipe_from_dict(data: dict) -> Recipe:
    """A validated Recipe from a plain dict (e.g. a run's saved resolved config)."""
    return validate(build(Recipe(), dict(data)))


def recipe_to_dict(recipe: Recipe) -> dict:
    """Plain nested dict (YAML/JSON-safe), in schema order."""
    return dataclasses.asdict(recipe)


class _Dumper(yaml.SafeDumper):
    pass


def _represent_list(dumper: yaml.SafeDumper, data: list) -> Any:
    # short scalar lists read best inline: stages: [enable-bidir, train-mntp]
    flow = all(not isinstance(v, (dict, list)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def dump_recipe_yaml(recipe: Recipe) -> str:
    """The resolved recipe as YAML; `load_recipe` on this text gives the same Recipe back."""
    return yaml.dump(
        recipe_to_dict(recipe), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=10_000
    )


def schema_help() -> str:
    """Markdown table of every field: key path, type, default, help."""
    rows = ["| key | type | default | help |", "| --- | --- | --- | --- |"]
    for f in schema_fields():
        cells = [f"`{f.key}`", f.type.replace("|", "\\|"), f"`{f.default}`", f.help]
        rows.append("| " + " | ".join(c.replace("\n", " ") for c in cells) + " |")
    return "\n".join(rows) + "\n"


__all__ = [
    "FieldDoc",
    "dump_recipe_yaml",
    "list_recipes",
    "load_recipe",
    "load_recipe_with_origin",
    "parse_override",
    "recipe_from_dict",
    "recipe_to_dict",
    "schema_fields",
    "schema_help",
]
