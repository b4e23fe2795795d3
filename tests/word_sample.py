"""A small synthetic CoNLL-style set written for these tests (no third-party text): template
sentences whose POS, chunk and NER tags follow from the words, so a probe on even a tiny random
model's features can learn them."""

import json
import random
from pathlib import Path

PEOPLE = [["John", "Smith"], ["Mary", "Jones"], ["Ada", "Okafor"], ["Li", "Wei"], ["Omar"], ["Greta"]]
PLACES = [["Paris"], ["New", "York"], ["Lagos"], ["Rio", "de", "Janeiro"], ["Oslo"]]
ORGS = [["Acme", "Corp"], ["United", "Nations"], ["Reuters"], ["Red", "Cross"]]
ADJ, NOUN = ["big", "old", "red", "quiet", "new"], ["dog", "house", "car", "bank", "report", "ship"]
VERB, DET, PREP = ["sees", "buys", "likes", "sells", "writes"], ["the", "a", "every"], ["in", "near", "from"]


def _name(words, kind):
    return words, ["NNP"] * len(words), ["B-NP"] + ["I-NP"] * (len(words) - 1), \
        [f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1)


def sentence(rng: random.Random) -> dict:
    parts = [_name(rng.choice(PEOPLE + ORGS), "PER")]
    if parts[0][0] in ORGS:
        parts = [_name(parts[0][0], "ORG")]
    parts.append(([rng.choice(VERB)], ["VBZ"], ["B-VP"], ["O"]))
    np_words = [rng.choice(DET)] + ([rng.choice(ADJ)] if rng.random() < 0.5 else []) + [rng.choice(NOUN)]
    np_pos = ["DT"] + (["JJ"] if len(np_words) == 3 else []) + ["NN"]
    parts.append((np_words, np_pos, ["B-NP"] + ["I-NP"] * (len(np_words) - 1), ["O"] * len(np_words)))
    if rng.random() < 0.7:
        parts.append(([rng.choice(PREP)], ["IN"], ["B-PP"], ["O"]))
        parts.append(_name(rng.choice(PLACES), "LOC"))
    parts.append((["."], ["."], ["O"], ["O"]))
    row = {"tokens": [], "pos": [], "chunk": [], "ner": []}
    for words, pos, chunk, ner in parts:
        row["tokens"] += words
        row["pos"] += pos
        row["chunk"] += chunk
        row["ner"] += ner
    return row


def write_sample(folder: Path, n_train: int = 160, n_test: int = 48, seed: int = 0) -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("test", n_test)):
        with open(folder / f"{name}.jsonl", "w") as f:
            for i in range(n):
                f.write(json.dumps({"id": i, **sentence(rng)}) + "\n")
    return folder
