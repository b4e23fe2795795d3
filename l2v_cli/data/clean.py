"""Sentences fit for contrastive training: drop the degenerate ones, and count what was dropped.

SimCSE contrasts every sentence with the rest of its batch. Lines such as "In:", "Out:" or
"<onlyinclude></onlyinclude>" carry no meaning to learn, and they repeat (10-14 times each in the
shipped Wikipedia sample): with length grouping they meet in one batch, where identical texts are
false negatives (a loss spike to 2.5 was seen). Rules, each counted separately:

  short    fewer than `min_tokens` tokens (the tokenizer's, no special tokens)
  markup   markup (<tags>, {{templates}}, [[links]], \\commands, |table| cells, == headings ==)
           with fewer than `min_tokens` words of letters once it is removed, or a lone word
           ("Out:", "Hocquart"); a short title such as "Dmitry Bukhman" is text, and kept

Exact duplicates are kept: the contrastive loss masks a duplicate inside a batch instead
(`l2v_cli.training.losses.info_nce`, `positive_ids`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import datasets
import numpy as np

_MARKUP = re.compile(r"<[^>]*>|\{\{.*?\}\}|\[\[|\]\]|\\[A-Za-z]+|^=+|=+$|\|")
_WORD = re.compile(r"[^\W\d_]{2,}")  # a word: two or more letters (any script)


@dataclass
class CleanStats:
    kept: int
    short: int
    markup: int

    @property
    def dropped(self) -> int:
        return self.short + self.markup

    def line(self, key: str) -> str:
        total = self.kept + self.dropped
        return (f"{key}: kept {self.kept:,} of {total:,} sentences; dropped {self.short:,} shorter "
                f"than the minimum and {self.markup:,} markup-only or one-word")


def words_without_markup(text: str) -> int:
    return len(_WORD.findall(_MARKUP.sub(" ", text)))


def degenerate_reason(text: str, n_tokens: int, min_tokens: int) -> str | None:
    """'short', 'markup' or None (kept)."""
    if n_tokens < min_tokens:
        return "short"
    words = words_without_markup(text)
    if words < 2 or (words < min_tokens and _MARKUP.search(text)):
        return "markup"
    return None


def drop_degenerate(ds: datasets.Dataset, tokenizer, min_tokens: int) -> tuple[datasets.Dataset, CleanStats]:
    """Keep the rows of `ds` ("text" column) that are neither short nor markup-only.

    `min_tokens` 0 keeps everything. The order of what is kept is unchanged. Works batch by batch
    (no list of the whole corpus)."""
    if min_tokens <= 0:
        return ds, CleanStats(len(ds), 0, 0)
    codes = {None: 0, "short": 1, "markup": 2}

    def judge(batch):
        counts = [len(ids) for ids in tokenizer(batch["text"], add_special_tokens=False)["input_ids"]]
        return {"_drop": [codes[degenerate_reason(t, n, min_tokens)]
                          for t, n in zip(batch["text"], counts)]}

    judged = ds.map(judge, batched=True, batch_size=1000, desc="Checking sentences")
    n = np.bincount(judged.with_format("numpy")["_drop"], minlength=3)
    stats = CleanStats(int(n[0]), int(n[1]), int(n[2]))
    if stats.dropped == 0:
        return ds, stats
    kept = judged.filter(lambda b: [c == 0 for c in b["_drop"]], batched=True, batch_size=1000,
                         desc="Dropping degenerate sentences")
    return kept.remove_columns("_drop"), stats
