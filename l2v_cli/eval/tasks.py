"""Evaluation tasks: STS, retrieval, classification, clustering — shipped sets or your own files.

A task is named (`stsb`, `stsb-dev`, `scifact`, `banking77`, `stackoverflow`) or given as
KIND:PATH for your own data in the same layout (see docs/eval.md):

  sts:PATH.jsonl            one {"sentence1", "sentence2", "score"} object per line
  retrieval:DIR             BEIR layout: DIR/corpus.jsonl ({"_id", "text"[, "title"]}),
                            DIR/queries.jsonl ({"_id", "text"}), DIR/qrels/test.tsv
                            (query-id<TAB>corpus-id<TAB>score, optional header line)
  classification:DIR        DIR/train.jsonl and DIR/test.jsonl, {"text", "label"} per line
  clustering:PATH.jsonl     {"text", "label"} per line

Every task is `load()`ed (layout checked; errors name file:line and the key) before the model is,
then `run(encoder)` returns {metric: value (×100), "n": ...}. `encoder` is anything with
`encode(texts, instruction=None)` -> (N, D) array: an `Encoder` or the cache wrapper.
Protocols (MTEB's, where MTEB has the task) are documented per class and in docs/eval.md.
"""

from __future__ import annotations

import copy
import random
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from l2v_cli.data.jsonl import parse_jsonl
from l2v_cli.encoding import as_prefix
from l2v_cli.errors import L2VError, did_you_mean
from l2v_cli.eval import metrics

SEED = 42

# --------------------------------------------------------------------------- instructions
# Query-side instructions as in the E5-mistral / LLM2Vec evaluation tables (LLM2Vec appends ":"
# to each; we pass "<instruction>: " as the Encoder's prefix). STS applies it to both sentences,
# retrieval to queries only, classification and clustering to every text.
STS_INSTRUCTION = "Retrieve semantically similar text"
TASK_INSTRUCTIONS = {
    "stsb": STS_INSTRUCTION,
    "stsb-dev": STS_INSTRUCTION,
    "scifact": "Given a scientific claim, retrieve documents that support or refute the claim",
    "banking77": "Given a online banking query, find the corresponding intents",
    # Not in the tables (MTEB has no 20-tag StackOverflow title clustering): adapted from their
    # StackExchangeClustering instruction.
    "stackoverflow": "Identify the topic or theme of StackOverflow posts given the titles",
}
# KIND:PATH tasks (your own data) get a generic instruction of the same style.
KIND_INSTRUCTIONS = {
    "sts": STS_INSTRUCTION,
    "retrieval": "Given a query, retrieve relevant passages that answer the query",
    "classification": "Classify the given text into its category",
    "clustering": "Identify the topic or theme of the given texts",
}
# For `l2v eval --mteb`: MTEB task name -> instruction (E5-mistral / LLM2Vec tables).
MTEB_INSTRUCTIONS = {
    **{name: STS_INSTRUCTION for name in (
        "STS12", "STS13", "STS14", "STS15", "STS16", "STS17", "STS22", "STSBenchmark", "SICK-R", "BIOSSES")},
    "SciFact": TASK_INSTRUCTIONS["scifact"],
    "Banking77Classification": TASK_INSTRUCTIONS["banking77"],
    "StackExchangeClustering": "Identify the topic or theme of StackExchange posts given the titles",
    "TwentyNewsgroupsClustering": "Identify the topic or theme of the given news articles",
    "ArguAna": "Given a claim, find documents that refute the claim",
    "NFCorpus": "Given a question, retrieve relevant documents that best answer the question",
    "SummEval": "Retrieve semantically similar summaries",
    "EmotionClassification": "Classify the emotion expressed in the given Twitter message into one of the "
                             "six emotions: anger, fear, joy, love, sadness, and surprise",
}




# --------------------------------------------------------------------------- protocols
# How texts reach the model. "no_prompt" is how users call an exported model
# (`SentenceTransformer(path).encode(texts)`: the bare text); "instruction" is the LLM2Vec / E5
# evaluation protocol (the task's instruction before the query side). Every table shows both.
PROTOCOLS = {"no_prompt": "no prompt", "instruction": "instruction"}
_PROTOCOL_ALIASES = {"no-prompt": "no_prompt", "none": "no_prompt", "plain": "no_prompt",
                     "instructions": "instruction", "instructed": "instruction"}


def parse_protocols(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """'both' (or None) -> both; otherwise comma-separated names (no_prompt / no-prompt,
    instruction), in PROTOCOLS order."""
    if spec is None:
        return tuple(PROTOCOLS)
    items = [x.strip() for x in (spec.split(",") if isinstance(spec, str) else spec) if x.strip()]
    if items == ["both"]:
        return tuple(PROTOCOLS)
    names = []
    for item in items:
        name = _PROTOCOL_ALIASES.get(item, item)
        if name not in PROTOCOLS:
            raise L2VError(f"unknown protocol {item!r}", where="--protocol",
                           fix=did_you_mean(item, ["both", "no-prompt", "instruction"]))
        names.append(name)
    if not names:
        raise L2VError("no protocol given", where="--protocol", fix="use both, no-prompt or instruction")
    return tuple(p for p in PROTOCOLS if p in names)


def column(task: str, protocol: str) -> str:
    """The label of one (task, protocol) score in tables and flat score maps: 'stsb (no prompt)'."""
    return f"{task} ({PROTOCOLS[protocol]})"


# --------------------------------------------------------------------------- data files
def eval_data_dir() -> Path:
    """The shipped eval data (data/eval in the repo, l2v_cli/assets/eval when installed)."""
    try:
        from l2v_cli.utils.paths import shipped_data_dir

        d = shipped_data_dir() / "eval"
        if d.is_dir():
            return d
    except ModuleNotFoundError:  # an editable install made before data/ was mapped as l2v_cli.assets
        pass
    return Path(__file__).resolve().parents[2] / "data" / "eval"


def _need_file(path: Path, what: str) -> Path:
    if not path.is_file():
        where = str(path.parent if path.parent.exists() else path)
        raise L2VError(f"{what}: {path} does not exist" if not path.exists() else f"{what}: {path} is not a file",
                       where=where, fix="see `docs/eval.md` for the file layout each task kind expects")
    return path


def read_jsonl(path: Path, keys: dict[str, tuple[type, ...]], optional: dict[str, tuple[type, ...]] | None = None,
               what: str = "data") -> list[tuple[int, dict]]:
    """Strictly read JSON objects, one per non-blank line: (line number, object) pairs.

    Every key in `keys` must be present with one of the given types; `optional` keys, when
    present, must have one of theirs. Errors name file:line and the key.
    """
    _need_file(path, what)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise L2VError(f"{path} is not valid UTF-8 ({e.reason})", where=str(path),
                       fix="re-encode the file as UTF-8") from None
    rows = parse_jsonl(lines, path, keys, optional)
    if not rows:
        raise L2VError(f"{path} holds no rows", where=str(path),
                       fix=f"one JSON object per line with keys {', '.join(keys)}")
    return rows


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _labels(v) -> str:
    return str(v)


def _subsample(n: int, limit: int | None, seed: int) -> list[int]:
    """Indices of a seeded random subset of size `limit` (all, in order, without a limit)."""
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), limit))


def embed_unique(encoder, texts: Sequence[str], instruction: str | None) -> np.ndarray:
    """Encode each distinct text once (one call, so the cache sees one list) and spread back."""
    uniq = list(dict.fromkeys(texts))
    emb = np.asarray(encoder.encode(uniq, instruction=instruction), dtype=np.float32)
    if len(uniq) == len(texts):
        return emb
    pos = {t: i for i, t in enumerate(uniq)}
    return emb[[pos[t] for t in texts]]


# --------------------------------------------------------------------------- tasks
class Task:
    """One evaluation. Subclasses set `kind` and `main_metric` and implement `load` and `run`."""

    kind = ""
    main_metric = ""

    def __init__(self, name: str, path: Path, instruction: str | None = None, limit: int | None = None,
                 seed: int = SEED):
        self.name, self.path, self.instruction, self.limit, self.seed = name, Path(path), instruction, limit, seed
        self.loaded = False

    @property
    def prefix(self) -> str | None:
        return as_prefix(self.instruction)

    def under(self, protocol: str) -> "Task":
        """This (loaded) task as run under `protocol`: the same data, without its instruction for
        "no_prompt"."""
        if protocol == "instruction" or self.instruction is None:
            return self
        bare = copy.copy(self)
        bare.instruction = None
        return bare

    def load(self) -> "Task":
        raise NotImplementedError

    def run(self, encoder) -> dict:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"kind": self.kind, "path": str(self.path), "instruction": self.instruction,
                "main_metric": self.main_metric, "limit": self.limit}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {str(self.path)!r})"


class STSTask(Task):
    """Semantic textual similarity: Spearman ×100 of cos(emb1, emb2) against the gold scores
    (MTEB's `cosine_spearman`). The instruction, if any, prefixes both sentences (LLM2Vec)."""

    kind = "sts"
    main_metric = "spearman"

    def load(self):
        rows = read_jsonl(self.path, {"sentence1": (str,), "sentence2": (str,), "score": (int, float)},
                          what="STS file")
        keep = _subsample(len(rows), self.limit, self.seed)
        self.s1 = [rows[i][1]["sentence1"] for i in keep]
        self.s2 = [rows[i][1]["sentence2"] for i in keep]
        self.gold = np.array([float(rows[i][1]["score"]) for i in keep])
        self.loaded = True
        return self

    def run(self, encoder) -> dict:
        emb = embed_unique(encoder, self.s1 + self.s2, self.prefix)
        n = len(self.s1)
        sims = metrics.cosine_pairs(emb[:n], emb[n:])
        return {"spearman": 100 * metrics.spearman(sims, self.gold), "n": n}


class RetrievalTask(Task):
    """BEIR-style retrieval: queries (with the instruction) against documents (without), ranked by
    cosine similarity. nDCG@10 ×100 (main) and Recall@100 ×100, over the queries of the test
    qrels. Document text is `title + " " + text` (stripped), as BEIR and MTEB build it.

    With `limit`: a seeded sample of `limit` queries; the corpus shrinks to their relevant
    documents plus 10 × limit other random documents (for smoke runs only: a smaller corpus is
    an easier task, so these numbers are not comparable to full runs)."""

    kind = "retrieval"
    main_metric = "ndcg@10"

    def load(self):
        d = self.path
        if not d.is_dir():
            raise L2VError(f"retrieval data must be a folder in BEIR layout, got {d}", where=str(d),
                           fix="give DIR holding corpus.jsonl, queries.jsonl and qrels/test.tsv")
        corpus_rows = read_jsonl(d / "corpus.jsonl", {"_id": (str, int), "text": (str,)}, {"title": (str, type(None))},
                                 what="retrieval corpus")
        query_rows = read_jsonl(d / "queries.jsonl", {"_id": (str, int), "text": (str,)}, what="retrieval queries")
        corpus = {}
        for _, o in corpus_rows:
            title = (o.get("title") or "").strip()
            corpus[str(o["_id"])] = (title + " " + o["text"]).strip() if title else o["text"]
        queries = {str(o["_id"]): o["text"] for _, o in query_rows}
        qrels = self._read_qrels(d / "qrels" / "test.tsv")
        missing_q = [q for q in qrels if q not in queries]
        if len(missing_q) == len(qrels):
            raise L2VError(f"none of the {len(qrels)} query ids in qrels/test.tsv (e.g. {missing_q[0]!r}) is in "
                           f"queries.jsonl", where=str(d / "qrels" / "test.tsv"),
                           fix="the first column must hold the '_id' values of queries.jsonl")
        docs_judged = {doc for j in qrels.values() for doc in j}
        if not docs_judged & corpus.keys():
            raise L2VError(f"none of the corpus ids in qrels/test.tsv (e.g. {next(iter(docs_judged))!r}) is in "
                           f"corpus.jsonl", where=str(d / "qrels" / "test.tsv"),
                           fix="the second column must hold the '_id' values of corpus.jsonl")
        # MTEB evaluates the queries that have judgements; relevant docs absent from the corpus
        # still count as relevant (they can never be retrieved), as in pytrec_eval.
        qids = sorted(q for q in qrels if q in queries and any(r > 0 for r in qrels[q].values()))
        if self.limit is not None and self.limit < len(qids):
            qids = sorted(random.Random(self.seed).sample(qids, self.limit))
            rel = {doc for q in qids for doc in qrels[q] if doc in corpus}
            others = [doc for doc in corpus if doc not in rel]
            extra = random.Random(self.seed + 1).sample(others, min(len(others), 10 * self.limit))
            keep = rel | set(extra)
            corpus = {k: v for k, v in corpus.items() if k in keep}
        self.qids = qids
        self.queries = [queries[q] for q in qids]
        self.doc_ids = list(corpus)
        self.docs = [corpus[k] for k in self.doc_ids]
        self.qrels = {q: qrels[q] for q in qids}
        self.loaded = True
        return self

    @staticmethod
    def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
        _need_file(path, "retrieval judgements (qrels)")
        qrels: dict[str, dict[str, int]] = defaultdict(dict)
        for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
            if not line.strip():
                continue
            cols = line.rstrip("\n").split("\t")
            if n == 1 and len(cols) == 3 and not _is_number(cols[2]):
                continue  # header (query-id, corpus-id, score)
            if len(cols) != 3:
                raise L2VError(f"line {n} has {len(cols)} tab-separated columns, expected 3", where=f"{path}:{n}",
                               fix="each line: query-id<TAB>corpus-id<TAB>score")
            q, doc, score = (c.strip() for c in cols)
            try:
                qrels[q][doc] = int(float(score))
            except ValueError:
                raise L2VError(f"line {n}: score {score!r} is not a number", where=f"{path}:{n}",
                               fix="the third column is the relevance, e.g. 1") from None
        if not qrels:
            raise L2VError(f"{path} holds no judgements", where=str(path), fix="query-id<TAB>corpus-id<TAB>score lines")
        return dict(qrels)

    def run(self, encoder) -> dict:
        # An encoder with its own `search` (a truncated / quantized view, eval/compact.py) ranks
        # the documents itself; otherwise cosine over float embeddings.
        search = getattr(encoder, "search", None)
        if search is not None:
            top = search(self.queries, self.prefix, self.docs, 100)
        else:
            q = np.asarray(encoder.encode(self.queries, instruction=self.prefix), dtype=np.float32)
            d = np.asarray(encoder.encode(self.docs, instruction=None), dtype=np.float32)
            top = metrics.cosine_search(q, d, 100)
        ranking = {qid: [self.doc_ids[j] for j in row] for qid, row in zip(self.qids, top)}
        return {"ndcg@10": 100 * metrics.ndcg_at_k(self.qrels, ranking, 10),
                "recall@100": 100 * metrics.recall_at_k(self.qrels, ranking, 100),
                "n": len(self.qids), "docs": len(self.doc_ids)}


class ClassificationTask(Task):
    """MTEB's classification protocol: 10 experiments; each draws 8 examples per label from the
    train split (seeded shuffle, MTEB's undersampling), fits a logistic regression (sklearn,
    max_iter=100, as MTEB) on their frozen embeddings and scores accuracy on the whole test split.
    Accuracy ×100 is the mean over experiments (`accuracy_std` their spread). The instruction
    prefixes every text. With `limit`: `limit` random test rows, and a train pool of
    `pool_per_label` random rows of each label to undersample from, so every experiment still
    trains on 8 examples per label as the full protocol does (a pool of `limit` random rows would
    leave fewer per label — about 4 of Banking77's 77 labels at 300 — and bias the score low)."""

    kind = "classification"
    main_metric = "accuracy"
    n_experiments = 10
    samples_per_label = 8
    max_iter = 100
    pool_per_label = 2 * samples_per_label

    def load(self):
        d = self.path
        if not d.is_dir():
            raise L2VError(f"classification data must be a folder, got {d}", where=str(d),
                           fix="give DIR holding train.jsonl and test.jsonl ({\"text\", \"label\"} per line)")
        spec = {"text": (str,), "label": (str, int)}
        train = read_jsonl(d / "train.jsonl", spec, what="classification train split")
        test = read_jsonl(d / "test.jsonl", spec, what="classification test split")
        tr = self._train_pool([_labels(o["label"]) for _, o in train])
        te = _subsample(len(test), self.limit, self.seed + 1)
        self.train_x = [train[i][1]["text"] for i in tr]
        self.train_y = [_labels(train[i][1]["label"]) for i in tr]
        self.test_x = [test[i][1]["text"] for i in te]
        self.test_y = [_labels(test[i][1]["label"]) for i in te]
        self.loaded = True
        return self

    def _train_pool(self, labels: list[str]) -> list[int]:
        """All train rows; with a `limit` below their number, `pool_per_label` seeded random rows
        of each label."""
        if self.limit is None or self.limit >= len(labels):
            return list(range(len(labels)))
        by_label: dict[str, list[int]] = defaultdict(list)
        for i, y in enumerate(labels):
            by_label[y].append(i)
        rng = random.Random(self.seed)
        return sorted(i for y in sorted(by_label) for i in
                      rng.sample(by_label[y], min(len(by_label[y]), self.pool_per_label)))

    def experiments(self) -> list[list[int]]:
        """The train indices of each experiment: a seeded reshuffle, then the first
        `samples_per_label` of each label (MTEB's `_undersample_data`)."""
        rng = np.random.RandomState(self.seed)
        idxs = np.arange(len(self.train_y))
        out = []
        for _ in range(self.n_experiments):
            rng.shuffle(idxs)
            count: dict[str, int] = defaultdict(int)
            chosen = []
            for i in idxs:
                if count[self.train_y[i]] < self.samples_per_label:
                    chosen.append(int(i))
                    count[self.train_y[i]] += 1
            out.append(chosen)
        return out

    def run(self, encoder) -> dict:
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        exps = self.experiments()
        used = sorted({i for e in exps for i in e})
        emb = embed_unique(encoder, [self.train_x[i] for i in used] + self.test_x, self.prefix)
        row = {i: k for k, i in enumerate(used)}
        test_emb = emb[len(used):]
        scores = []
        for k, chosen in enumerate(exps):
            X = emb[[row[i] for i in chosen]]
            y = [self.train_y[i] for i in chosen]
            if len(set(y)) < 2:  # one label only: the classifier would always say it
                pred = [y[0]] * len(self.test_y)
            else:
                clf = LogisticRegression(max_iter=self.max_iter, random_state=self.seed + k)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter=100 is MTEB's
                    warnings.simplefilter("ignore", UserWarning)  # "many classes for few samples" (--limit)
                    clf.fit(X, y)
                pred = clf.predict(test_emb)
            scores.append(100 * metrics.accuracy(self.test_y, pred))
        return {"accuracy": float(np.mean(scores)), "accuracy_std": float(np.std(scores)),
                "n": len(self.test_y), "train_n": len(used)}


class ClusteringTask(Task):
    """MTEB's (fast) clustering protocol: embed every text once, then 10 experiments, each
    clustering a seeded random subset (without replacement) of min(N, 16,384) texts with
    mini-batch k-means (k = number of gold labels, batch 512, k-means++, one init) and scoring
    V-measure ×100 against the gold labels; the mean is reported (`v_measure_std` the spread).
    The instruction prefixes every text. With `limit`: `limit` random texts."""

    kind = "clustering"
    main_metric = "v_measure"
    n_experiments = 10
    subset_size = 16_384
    kmeans_batch_size = 512

    def load(self):
        rows = read_jsonl(self.path, {"text": (str,), "label": (str, int)}, what="clustering file")
        keep = _subsample(len(rows), self.limit, self.seed)
        self.texts = [rows[i][1]["text"] for i in keep]
        self.labels = [_labels(rows[i][1]["label"]) for i in keep]
        self.loaded = True
        return self

    def run(self, encoder) -> dict:
        from sklearn.cluster import MiniBatchKMeans

        emb = embed_unique(encoder, self.texts, self.prefix)
        labels = np.array(self.labels)
        k = len(set(self.labels))
        rng = random.Random(self.seed)
        size = min(len(self.texts), self.subset_size)
        scores = []
        for e in range(self.n_experiments):
            idx = sorted(rng.sample(range(len(self.texts)), size))
            if k < 2:
                scores.append(100.0)  # one gold cluster: any assignment into one cluster is perfect
                continue
            km = MiniBatchKMeans(n_clusters=min(k, size), batch_size=self.kmeans_batch_size, init="k-means++",
                                 n_init=1, random_state=self.seed + e)
            pred = km.fit_predict(emb[idx].astype(np.float64))
            scores.append(100 * metrics.v_measure(labels[idx], pred))
        return {"v_measure": float(np.mean(scores)), "v_measure_std": float(np.std(scores)), "n": len(self.texts),
                "clusters": k}


KINDS: dict[str, type[Task]] = {"sts": STSTask, "retrieval": RetrievalTask,
                                "classification": ClassificationTask, "clustering": ClusteringTask}
# name -> (kind, path under the shipped data/eval)
SHIPPED: dict[str, tuple[str, str]] = {
    "stsb": ("sts", "stsb/test.jsonl"),
    "stsb-dev": ("sts", "stsb/dev.jsonl"),
    "scifact": ("retrieval", "scifact"),
    "banking77": ("classification", "banking77"),
    "stackoverflow": ("clustering", "stackoverflow/titles.jsonl"),
}
DEFAULT_TASKS = ["stsb", "scifact", "banking77", "stackoverflow"]


def get_task(spec: str, *, instructions: bool = True, limit: int | None = None, seed: int = SEED) -> Task:
    """A shipped task name, or KIND:PATH for your own data (not yet loaded)."""
    spec = spec.strip()
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise L2VError(f"limit must be a positive integer, got {limit!r}", where="--limit", fix="e.g. --limit 50")
    if spec in SHIPPED:
        kind, rel = SHIPPED[spec]
        instr = TASK_INSTRUCTIONS.get(spec)
        return KINDS[kind](spec, eval_data_dir() / rel, instr if instructions else None, limit, seed)
    kind, sep, path = spec.partition(":")
    if sep and kind in KINDS:
        if not path:
            example = "my_data" if kind in ("retrieval", "classification") else "my_data.jsonl"
            raise L2VError(f"task {spec!r} names no path", where="--tasks", fix=f"write {kind}:PATH, e.g. {kind}:{example}")
        from l2v_cli.utils.paths import resolve_data_path

        try:
            p = resolve_data_path(path)
        except ModuleNotFoundError:
            p = Path(path).expanduser()
        if not p.exists():
            raise L2VError(f"task {spec!r}: {path} does not exist", where="--tasks",
                           fix="check the path (relative paths are from the working directory)")
        instr = KIND_INSTRUCTIONS[kind] if instructions else None
        return KINDS[kind](spec, p, instr, limit, seed)
    if sep and len(kind) > 1:  # KIND:PATH with an unknown kind (a one-letter "kind" is a Windows drive)
        raise L2VError(f"unknown task kind {kind!r} in {spec!r}", where="--tasks",
                       fix=did_you_mean(kind, KINDS) + " (write KIND:PATH)")
    raise L2VError(f"unknown task {spec!r}", where="--tasks",
                   fix=did_you_mean(spec, list(SHIPPED) + [f"{k}:PATH" for k in KINDS]))


def parse_tasks(tasks: str | Task | Sequence[str | Task] | None, *, instructions: bool = True,
                limit: int | None = None, seed: int = SEED) -> list[Task]:
    """'stsb,scifact' (split on commas) or a list of names / KIND:PATH specs / Task objects
    (taken whole) -> Tasks, not loaded yet. None means the four shipped tasks."""
    if tasks is None:
        tasks = list(DEFAULT_TASKS)
    if isinstance(tasks, Task):
        tasks = [tasks]
    elif isinstance(tasks, str):
        tasks = tasks.split(",")
    specs: list[str | Task] = [t if isinstance(t, Task) else str(t) for t in tasks
                               if isinstance(t, Task) or str(t).strip()]
    if not specs:
        raise L2VError("no tasks given", where="--tasks", fix="e.g. --tasks " + ",".join(DEFAULT_TASKS))
    out = [t if isinstance(t, Task) else get_task(t, instructions=instructions, limit=limit, seed=seed) for t in specs]
    names = [t.name for t in out]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise L2VError(f"task {dup!r} is listed twice", where="--tasks", fix="list each task once")
    return out
