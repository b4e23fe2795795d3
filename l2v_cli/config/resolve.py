"""Family defaults that reach training: `auto` (or a value the recipe leaves out) becomes the model
family's value, and every such value carries where it came from.

    resolved = resolve_for_model(recipe, "mistral-7b", origin)
    resolved.recipe            # mntp.mask_probability 0.8, mask_strategy all (the paper's Mistral MNTP)
    resolved.choices           # [Choice("mntp.mask_probability", 0.8, "family default (paper)"), ...]

An explicit recipe value or override always wins; when it differs from the family's value a
one-line note says so. A family with no entry in configs/families.yaml gets the generic defaults,
and a note says that too. Two values stay `auto` in the resolved recipe because they are chosen
when the model is loaded, in a stated order: the MNTP mask token (it depends on the tokenizer:
`l2v_cli.data.mntp.resolve_mask_token`) and the attention kernel (it must pass the
bidirectionality probe: `l2v_cli.modeling.loading.kernel_candidates`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from l2v_cli.modeling.families import FamilyMatch, family_of

AUTO = "auto"
Origin = Callable[[str], Optional[str]]  # key path -> "recipes/x.yaml:12" | "override 'k=v'" | None (not set)



def mask_token_order(family_token: str) -> str:
    """The order in which `mntp.mask_token: auto` picks a token (`data.mntp.resolve_mask_token`)."""
    underscore = "" if family_token == "_" else ", '_'"
    return (f"{family_token!r} if it is one token, else the tokenizer's own mask token{underscore}, "
            "a reserved/unused special token, EOS, a new <mask>")


@dataclass(frozen=True)
class Choice:
    key: str  # e.g. "mntp.mask_probability"
    value: Any  # what is used ("auto" for the two chosen at load time)
    source: str  # "family default (paper)" | "recipe (recipes/x.yaml:12)" | "override 'k=v'"
    detail: str = ""  # for `auto`: the order in which it is chosen

    def shown(self) -> str:
        return f"{self.source}: {self.detail}" if self.detail else self.source


@dataclass
class Resolved:
    recipe: Any  # the Recipe with family values filled in
    family: FamilyMatch
    choices: list[Choice] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def provenance(self) -> dict:
        """JSON-ready record for the stage records (stage.json, DONE.json)."""
        return {"family": self.family.family.name, "family_known": self.family.known,
                "family_from": self.family.how,
                "values": {c.key: {"value": c.value, "source": c.source, **({"detail": c.detail} if c.detail else {})}
                           for c in self.choices},
                "notes": list(self.notes)}

    def table(self, model: str = "") -> str:
        """The family-dependent values, what they resolved to and where each came from (--dry-run)."""
        width = max(len(c.key) for c in self.choices)
        vwidth = max(len(str(c.value)) for c in self.choices)
        head = f"family-dependent settings{' for ' + model if model else ''}: family {self.family.describe()}"
        lines = [head] + [f"  {c.key:<{width}}  {str(c.value):<{vwidth}}  <- {c.shown()}" for c in self.choices]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])

    def annotated_yaml(self) -> str:
        """The resolved recipe as YAML, each family-dependent value commented with its source (--print-config).
        Loading the text back gives the same recipe (comments are ignored)."""
        from l2v_cli.config.loader import dump_recipe_yaml

        by_key = {c.key: c for c in self.choices}
        out = [f"# model family: {self.family.describe()}"] + [f"# note: {n}" for n in self.notes]
        section = ""
        for line in dump_recipe_yaml(self.recipe).splitlines():
            if line and not line.startswith(" "):
                section = line.split(":", 1)[0]
            elif line.startswith("  ") and not line.startswith("   ") and ":" in line:
                c = by_key.get(f"{section}.{line.strip().split(':', 1)[0]}")
                if c is not None:
                    line += f"  # {c.source}" + (f"; {c.detail}" if c.detail else "")
            out.append(line)
        return "\n".join(out) + "\n"


def _shown(value) -> str:
    return repr(value) if isinstance(value, str) and not value.replace("-", "").isalnum() else str(value)


def _explicit(key: str, origin: Optional[Origin]) -> str:
    where = origin(key) if origin else None
    if where is None:
        return "recipe"
    return where if where.startswith("override") else f"recipe ({where})"


def resolve_with_family(recipe, fam: FamilyMatch, origin: Optional[Origin] = None) -> Resolved:
    """`recipe` with its `auto` family-dependent values filled in from `fam` (see the module doc)."""
    f = fam.family
    mask_source = f"family default ({f.source})"
    attn_source = "family default (l2v" + (f": {f.note}" if f.attn_implementation != "sdpa" and f.note else "") + ")"
    attn_detail = (f"{f.attn_implementation} first, eager if it fails the bidirectionality probe"
                   if f.attn_implementation != "eager" else "eager")
    wanted = {  # key -> (family value, value to put in the recipe for auto, source, detail)
        "mntp.mask_token": (f.mask_token, AUTO, mask_source, mask_token_order(f.mask_token)),
        "mntp.mask_probability": (f.mask_probability, f.mask_probability, mask_source, ""),
        "mntp.mask_strategy": (f.mask_strategy, f.mask_strategy, mask_source, ""),
        "bidir.attn_implementation": (f.attn_implementation, AUTO, attn_source, attn_detail),
    }
    res = Resolved(recipe, fam)
    sections: dict[str, dict] = {}
    for key, (fam_value, auto_value, source, detail) in wanted.items():
        section, name = key.split(".")
        value = getattr(getattr(recipe, section), name)
        if value == AUTO:
            sections.setdefault(section, {})[name] = auto_value
            res.choices.append(Choice(key, auto_value, source, detail))
            continue
        src = _explicit(key, origin)
        res.choices.append(Choice(key, value, src))
        if fam.known and value != fam_value:
            res.notes.append(f"{key}={value} ({src}) differs from the {f.name} family default {_shown(fam_value)} "
                             f"({f.source if key.startswith('mntp') else 'l2v'}); using {value}")
    if not fam.known:
        res.notes.insert(0, f"model family: {fam.describe()}; using the generic defaults")
    new = recipe
    for section, values in sections.items():
        new = dataclasses.replace(new, **{section: dataclasses.replace(getattr(new, section), **values)})
    res.recipe = new
    return res


def resolve_for_model(recipe, model, origin: Optional[Origin] = None) -> Resolved:
    """`resolve_with_family` for MODEL (alias, folder, stage folder, .gguf, hub id): its family is
    found without loading weights (`l2v_cli.modeling.families.family_of`)."""
    return resolve_with_family(recipe, family_of(model), origin)


__all__ = ["AUTO", "Choice", "mask_token_order", "Resolved", "resolve_for_model", "resolve_with_family"]
