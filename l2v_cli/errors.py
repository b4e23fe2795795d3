"""One error type for every user-facing failure: what went wrong, where, and how to fix it."""

from __future__ import annotations

import difflib
from typing import Iterable


class L2VError(Exception):
    """An error caused by the user's input or environment; the CLI prints it as one line."""

    def __init__(self, what: str, where: str | None = None, fix: str | None = None):
        self.what, self.where, self.fix = what, where, fix
        super().__init__(self.line())

    def line(self) -> str:
        parts = [self.what]
        if self.where:
            parts.append(f"({self.where})")
        msg = " ".join(parts)
        if self.fix:
            msg += f" — fix: {self.fix}"
        return msg


def closest(word: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Close matches for suggestions ("did you mean ...")."""
    return difflib.get_close_matches(word, list(choices), n=n, cutoff=0.5)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    choices = list(choices)
    near = closest(word, choices)
    if near:
        return "did you mean " + " or ".join(repr(c) for c in near) + "?"
    return "valid: " + ", ".join(sorted(choices))
