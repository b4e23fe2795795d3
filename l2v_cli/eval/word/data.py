"""CoNLL-style word-level data: DIR/train.jsonl and DIR/test.jsonl, one sentence per line,

    {"tokens": ["EU", "rejects", ...], "pos": ["NNP", "VBZ", ...], "ner": ["B-ORG", "O", ...], ...}

one tag list per task, as long as `tokens`. DIR/labels.json ({task: [tag, ...]}) fixes the label
order when present; otherwise the labels are the sorted tags seen in train (a test tag never seen
in train counts as an error: the probe cannot predict it).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from l2v_cli.errors import L2VError

WORD_TASKS = ("pos", "chunk", "ner")


@dataclass
class Split:
    words: list[list[str]]
    tags: dict[str, list[list[str]]] = field(default_factory=dict)  # task -> per-sentence tags

    def __len__(self) -> int:
        return len(self.words)


@dataclass
class WordData:
    path: Path
    train: Split
    test: Split
    labels: dict[str, list[str]]


def parse_word_tasks(spec: str) -> list[str]:
    """'pos,chunk,ner' -> ['pos', 'chunk', 'ner']; any key of the data may be a task (checked on load)."""
    tasks = [t.strip() for t in str(spec).split(",") if t.strip()]
    if not tasks:
        raise L2VError("no word tasks given", where="--word-tasks", fix="e.g. --word-tasks pos,chunk,ner")
    dup = next((t for t in tasks if tasks.count(t) > 1), None)
    if dup:
        raise L2VError(f"word task {dup!r} is listed twice", where="--word-tasks", fix="list each task once")
    return tasks


def _read_split(path: Path, tasks: list[str], limit: int | None, seed: int) -> Split:
    from l2v_cli.eval.tasks import read_jsonl

    rows = read_jsonl(path, {"tokens": (list,)}, {t: (list,) for t in tasks}, what="word-level data")
    if limit is not None and limit < len(rows):
        rows = sorted(random.Random(seed).sample(rows, limit), key=lambda r: r[0])
    split = Split([], {t: [] for t in tasks})
    for n, obj in rows:
        words = obj["tokens"]
        if not words or not all(isinstance(w, str) and w.strip() for w in words):
            raise L2VError(f"line {n}: 'tokens' must be a non-empty list of non-blank strings", where=f"{path}:{n}",
                           fix="one sentence per line, its words in 'tokens'")
        for t in tasks:
            if t not in obj:
                raise L2VError(f"line {n} has no {t!r} tags", where=f"{path}:{n}",
                               fix=f"add a {t!r} list (one tag per token) or drop {t} from --word-tasks")
            tags = obj[t]
            if len(tags) != len(words) or not all(isinstance(x, str) for x in tags):
                raise L2VError(f"line {n}: {t!r} has {len(tags)} tags for {len(words)} tokens", where=f"{path}:{n}",
                               fix="give one string tag per token")
            split.tags[t].append(tags)
        split.words.append(words)
    return split


def load_word_data(path: str | Path, tasks: list[str], *, train_limit: int | None = None,
                   test_limit: int | None = None, seed: int = 42) -> WordData:
    """Read and check DIR (see the module docstring); `*_limit` = a seeded sample of sentences."""
    d = Path(path).expanduser()
    if not d.is_dir():
        raise L2VError(f"word-level data folder {d} does not exist" if not d.exists() else f"{d} is not a folder",
                       where="--data", fix="give a folder with train.jsonl and test.jsonl (see docs/eval.md)")
    for name in ("train.jsonl", "test.jsonl"):
        if not (d / name).is_file():
            raise L2VError(f"{d} has no {name}", where=str(d / name),
                           fix="give a folder with train.jsonl and test.jsonl (see docs/eval.md)")
    train = _read_split(d / "train.jsonl", tasks, train_limit, seed)
    test = _read_split(d / "test.jsonl", tasks, test_limit, seed + 1)
    labels = {t: sorted({x for s in train.tags[t] for x in s}) for t in tasks}
    lf = d / "labels.json"
    if lf.exists():
        try:
            given = json.loads(lf.read_text())
        except json.JSONDecodeError as e:
            raise L2VError(f"labels.json is not valid JSON: {e.msg}", where=str(lf), fix="fix or remove it") from None
        for t in tasks:
            if t in given:
                missing = sorted(set(labels[t]) - set(given[t]))
                if missing:
                    raise L2VError(f"train has {t} tags not in labels.json: {missing[:5]}", where=str(lf),
                                   fix=f"add them to labels.json[{t!r}] or remove the file")
                labels[t] = list(given[t])
    return WordData(d, train, test, labels)
