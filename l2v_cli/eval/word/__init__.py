"""Word-level evaluation (`l2v eval MODEL --word-tasks pos,chunk,ner --data DIR`): linear probes on
frozen token representations, as in the LLM2Vec paper's first experiment.

    from l2v_cli.eval.word import evaluate_words
    res = evaluate_words("smollm2-135m@causal", ["pos", "ner"], "path/to/conll")
    res["tasks"]["ner"]["next_token"]["f1"]

Per task and label position (same_token / next_token, see features.py): a probe is fit on train
and scored on test — accuracy ×100 for tagging tasks (pos, chunk, ...), entity-level micro F1 ×100
for IOB2 tasks (ner, or any task whose tags look like B-X / I-X / O and is named ner).
"""

from __future__ import annotations

import time

import numpy as np

from l2v_cli.eval.word.data import WORD_TASKS, load_word_data, parse_word_tasks
from l2v_cli.eval.word.features import POSITIONS, cached_extract
from l2v_cli.eval.word.metrics import accuracy, entity_f1
from l2v_cli.eval.word.probe import train_probe

__all__ = ["evaluate_words", "WORD_TASKS", "POSITIONS", "parse_word_tasks", "load_word_data"]


def _is_entity_task(task: str) -> bool:
    return task == "ner"


def _score(task: str, gold: list[list[str]], pred: list[list[str]]) -> dict:
    out = {"accuracy": accuracy(gold, pred)}
    if _is_entity_task(task):
        out.update(entity_f1(gold, pred))
    return out


def _unflatten(flat: list, like: list[list]) -> list[list]:
    out, i = [], 0
    for s in like:
        out.append(flat[i:i + len(s)])
        i += len(s)
    return out


def evaluate_words(model, tasks, data, *, positions=POSITIONS, layer: int = -1, subword: str = "first",
                   dtype: str = "auto", batch_size: int = 32, cache: bool = True, train_limit: int | None = None,
                   test_limit: int | None = None, seed: int = 42, attn_implementation: str = "sdpa",
                   trust_remote_code: bool = False, show_progress: bool = False) -> dict:
    """Probe MODEL (spec, `MODEL@causal`, or a loaded Encoder) on word tasks; see the module docstring.
    `data` is a folder or an already loaded `WordData`."""
    from l2v_cli.eval.runner import is_encoder, load_encoder, mode_name
    from l2v_cli.eval.word.data import WordData
    from l2v_cli.modeling.bidir import is_bidirectional_config

    task_list = parse_word_tasks(tasks) if isinstance(tasks, str) else list(tasks)
    wd = data if isinstance(data, WordData) else load_word_data(data, task_list, train_limit=train_limit,
                                                                test_limit=test_limit, seed=seed)
    if is_encoder(model):
        enc, spec, load_s = model, str(getattr(model, "name", "encoder")), 0.0
    else:
        enc, spec, load_s = load_encoder(model, dtype=dtype, max_length=1 << 20, attn_implementation=attn_implementation,
                                         trust_remote_code=trust_remote_code)
    bidir = is_bidirectional_config(enc._backbone.config)
    t0 = time.perf_counter()
    kw = dict(layer=layer, subword=subword, batch_size=batch_size, cache=cache, show_progress=show_progress)
    f_train, s_train = cached_extract(enc, wd.train.words, **kw)
    f_test, s_test = cached_extract(enc, wd.test.words, **kw)
    feature_s = time.perf_counter() - t0
    result = {"model": f"{spec} ({mode_name(bidir)})", "spec": spec, "data": str(wd.path),
              "settings": {"layer": layer, "subword": subword, "dtype": str(enc.dtype).replace("torch.", ""),
                           "attention": mode_name(bidir), "positions": list(positions),
                           "train_sentences": len(wd.train), "test_sentences": len(wd.test),
                           "train_words": int(f_train["same_token"].shape[0]),
                           "test_words": int(f_test["same_token"].shape[0])},
              "features": {"train": s_train, "test": s_test, "seconds": round(feature_s, 2)},
              "load_s": round(load_s, 2), "tasks": {}}
    t1 = time.perf_counter()
    for task in task_list:
        labels = wd.labels[task]
        index = {t: i for i, t in enumerate(labels)}
        y = np.array([index[t] for s in wd.train.tags[task] for t in s])
        r = {"labels": len(labels), "main_metric": "f1" if _is_entity_task(task) else "accuracy"}
        for pos in positions:
            predict = train_probe(f_train[pos], y, len(labels), seed=seed)
            pred = [labels[i] for i in predict(f_test[pos])]
            r[pos] = _score(task, wd.test.tags[task], _unflatten(pred, wd.test.tags[task]))
        result["tasks"][task] = r
    result["probe_s"] = round(time.perf_counter() - t1, 2)
    return result
