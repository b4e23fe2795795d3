"""Supervised contrastive data: named sets of (query, positive, negative) with an instruction each.

    sets = load_supervised(recipe.supervised)               # [NamedSet(name, instruction, dataset)]
    rows = TripletRows(sets)                                 # all sets end to end (global indices)
    batches = OneDatasetBatchSampler(rows.sizes, batch_size=64, seed=42,
                                     num_replicas=world_size, rank=rank)

E5 layout (LLM2Vec's echo-data): a directory with one jsonl per dataset (the name is the file
stem), keys query/positive/negative. A single triplet file (jsonl/csv/parquet; `anchor` is
accepted for `query`) is one dataset named after the file. Batches come from one dataset at a
time: in-batch negatives from another task would be trivially easy and teach nothing.
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch

from l2v_cli.config.schema import SupervisedConfig
from l2v_cli.data.text import (FORMATS, content_dataset, file_columns, iter_records, load_hub,
                               looks_local, missing_path_error, read_utf8)
from l2v_cli.errors import L2VError
from l2v_cli.utils.paths import resolve_data_path

COLUMNS = ("query", "positive", "negative")
TABLE_FORMATS = {s: f for s, f in FORMATS.items() if f != "txt"}

# LLM2Vec's query instructions for the E5 (echo-data) sets; used when `instructions` is null and
# the data directory has no instructions.json. Where LLM2Vec alternates two (allnli, quora), the
# first is used.
BUILTIN_INSTRUCTIONS = {
    "allnli": "Given a premise, retrieve a hypothesis that is entailed by the premise",
    "dureader": "Given a Chinese search query, retrieve web passages that answer the question",
    "eli5_question_answer":
        "Provided a user question, retrieve the highest voted answers on Reddit ELI5 forum",
    "fever": "Given a claim, retrieve documents that support or refute the claim",
    "hotpot_qa": "Given a multi-hop question, retrieve documents that can help answer the question",
    "miracl": "Given a question, retrieve Wikipedia passages that answer the question",
    "mrtydi": "Given a question, retrieve Wikipedia passages that answer the question",
    "msmarco_passage": "Given a web search query, retrieve relevant passages that answer the query",
    "msmarco_document": "Given a web search query, retrieve relevant documents that answer the query",
    "nq": "Given a question, retrieve Wikipedia passages that answer the question",
    "quora_duplicates":
        "Given a question, retrieve questions that are semantically equivalent to the given question",
    "squad": "Retrieve Wikipedia passages that answer the question",
    "t2ranking": "Given a Chinese search query, retrieve web passages that answer the question",
    "trivia_qa": "Retrieve Wikipedia passages that answer the question",
}


@dataclass
class NamedSet:
    name: str
    instruction: str  # prepended to queries only ("" = none)
    dataset: datasets.Dataset  # columns query, positive, negative


# --------------------------------------------------------------------------- instructions


def _read_instructions(path: Path, where: str) -> dict[str, str]:
    try:
        mapping = json.loads(read_utf8(path))
    except json.JSONDecodeError as e:
        raise L2VError(f"{path.name} is not valid JSON ({e.msg})", f"{path}:{e.lineno}",
                       'write a JSON object: {"dataset name": "instruction", ...}') from None
    return _check_mapping(mapping, str(path))


def _check_mapping(mapping, where: str) -> dict[str, str]:
    if not isinstance(mapping, dict):
        raise L2VError("instructions must map dataset name -> instruction", where,
                       'write a JSON object: {"dataset name": "instruction", ...}')
    for name, text in mapping.items():
        if not isinstance(text, str):
            raise L2VError(f"instruction for '{name}' is a {type(text).__name__}, not a string",
                           where, "give one instruction string per dataset")
    return mapping


def _instructions(cfg: SupervisedConfig, data_dir: Path | None, key: str) -> dict[str, str]:
    """Explicit mapping or json path; else the data directory's instructions.json; else built-in."""
    if isinstance(cfg.instructions, dict):
        return _check_mapping(cfg.instructions, f"key {key}.instructions")
    if cfg.instructions:
        path = resolve_data_path(cfg.instructions)
        if not path.is_file():
            raise L2VError(f"instructions file not found: {cfg.instructions} (looked in {path.resolve()})",
                           f"key {key}.instructions",
                           "give a json file mapping dataset name -> instruction, or null for the defaults")
        return _read_instructions(path, f"key {key}.instructions")
    if data_dir is not None and (data_dir / "instructions.json").is_file():
        return _read_instructions(data_dir / "instructions.json", str(data_dir))
    return BUILTIN_INSTRUCTIONS


def instruction_for(name: str, mapping: dict[str, str]) -> str:
    """Exact name first, then without echo-data's _split1/_split2 suffix; else no instruction."""
    base = name.removesuffix("_split1").removesuffix("_split2")
    return mapping.get(name, mapping.get(base, ""))


# --------------------------------------------------------------------------- reading


def _triplets(rows, origin: str, require_negative: bool = True) -> datasets.Dataset:
    """Columns query/positive/negative from (where, row) pairs; every row must have all three
    (without `require_negative`, pairs: a missing negative becomes "")."""
    cols: dict[str, list[str]] = {c: [] for c in COLUMNS}
    needed = COLUMNS if require_negative else COLUMNS[:2]
    for where, row in rows:
        if "query" not in row and "anchor" in row:
            row["query"] = row["anchor"]
        if not require_negative and row.get("negative") is None:
            row["negative"] = ""
        for c in COLUMNS:
            if c not in row:
                raise L2VError(f"row has no '{c}' (keys: {', '.join(row) or 'none'})", where,
                               f"every row needs query (or anchor), {' and '.join(needed[1:])}")
            if not isinstance(row[c], str):
                raise L2VError(f"'{c}' holds a {type(row[c]).__name__}, not text", where,
                               f"give one string per row for '{c}'")
            cols[c].append(row[c])
    if not cols["query"]:
        raise L2VError(f"no triplets in {origin}", origin, "give at least one row")
    return content_dataset(cols)


def _read_file(path: Path, fmt: str = "auto", require_negative: bool = True) -> datasets.Dataset:
    fmt = fmt if fmt in TABLE_FORMATS.values() else TABLE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise L2VError(f"unknown triplet file type '{path.suffix}'", str(path),
                       f"use {', '.join(TABLE_FORMATS)} with columns query, positive, negative")
    header = file_columns(path, fmt)
    if header is not None and _missing(header, require_negative):  # one error about the header
        raise L2VError(f"{path.name} has no column '{_missing(header, require_negative)[0]}' "
                       f"(columns: {', '.join(header)})", str(path),
                       "give columns query (or anchor), positive" + (" and negative" if require_negative else ""))
    return _triplets(iter_records(path, fmt), str(path), require_negative)


def _missing(columns: list[str], require_negative: bool = True) -> list[str]:
    have = set(columns) | ({"query"} if "anchor" in columns else set())
    return [c for c in (COLUMNS if require_negative else COLUMNS[:2]) if c not in have]


def _read_hub(name: str, cfg: SupervisedConfig, key: str, require_negative: bool = True) -> datasets.Dataset:
    ds = load_hub(name, cfg.data.split, f"{key}.data")
    if _missing(ds.column_names, require_negative):
        raise L2VError(f"hub dataset '{name}' has no column '{_missing(ds.column_names, require_negative)[0]}' "
                       f"(columns: {', '.join(ds.column_names)})", f"key {key}.data.path",
                       "use a triplet dataset with columns (query or anchor), positive, negative")
    return _triplets(((f"hub dataset '{name}' row {i + 1}", row) for i, row in enumerate(ds)), name,
                     require_negative)


def load_supervised(cfg: SupervisedConfig, key: str = "supervised", require_negative: bool = True) -> list[NamedSet]:
    """The named triplet sets of `cfg.data.path` (E5 directory, triplet file(s) or hub name).

    `data.max_samples` caps each set. Instructions: see `_instructions`; a set without one gets "".
    `require_negative=False` reads (query, positive) pairs too (negative "" where absent), for mining."""
    data = cfg.data
    paths = data.path if isinstance(data.path, list) else [data.path] if data.path else []
    if not paths:
        raise L2VError(f"no data: {key}.data.path is empty", f"key {key}.data.path",
                       "set it to an E5 directory (one jsonl per dataset) or a triplet file")
    found: list[tuple[str, datasets.Dataset, Path | None]] = []
    for name in paths:
        local = resolve_data_path(name)
        if data.format == "hub" or (not local.exists() and not looks_local(name)):
            found.append((name.split("/")[-1].split(":")[0], _read_hub(name, cfg, key, require_negative), None))
        elif not local.exists():
            raise missing_path_error(name, f"{key}.data")
        elif local.is_dir():
            files = sorted(p for p in local.iterdir() if p.suffix.lower() in TABLE_FORMATS)
            if not files:
                raise L2VError(f"no {'/'.join(TABLE_FORMATS)} files in {local}", str(local),
                               "an E5 directory holds one <dataset>.jsonl per dataset")
            found += [(f.stem, _read_file(f, require_negative=require_negative), local) for f in files]
        else:
            found.append((local.stem, _read_file(local, data.format, require_negative), None))
    seen = set()
    for name, _, _ in found:
        if name in seen:
            raise L2VError(f"two datasets are named '{name}'", f"key {key}.data.path",
                           "rename one file: dataset names (file stems) must be unique")
        seen.add(name)
    sets = []
    for name, ds, data_dir in found:
        if data.max_samples and len(ds) > data.max_samples:
            ds = ds.select(range(data.max_samples))
        sets.append(NamedSet(name, instruction_for(name, _instructions(cfg, data_dir, key)), ds))
    return sets


# --------------------------------------------------------------------------- batching


class TripletRows(torch.utils.data.Dataset):
    """All sets end to end (ConcatDataset order); row i is a dict with query, positive, negative,
    plus its set's `name` and `instruction`."""

    def __init__(self, sets: list[NamedSet]):
        self.sets = sets
        self.sizes = [len(s.dataset) for s in sets]
        self.offsets = [0] + list(torch.tensor(self.sizes).cumsum(0).tolist())

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, i: int) -> dict:
        d = bisect.bisect_right(self.offsets, i) - 1
        s = self.sets[d]
        return {**s.dataset[i - self.offsets[d]], "name": s.name, "instruction": s.instruction}


class OneDatasetBatchSampler:
    """Batches of global indices (into `TripletRows` order), each from ONE dataset.

    Per epoch: shuffle each dataset, cut it into global batches of batch_size * num_replicas, and
    shuffle all global batches together (so datasets interleave in proportion to their size, as
    LLM2Vec does). Rank r takes slice r of each global batch: at every step all ranks draw
    disjoint rows of the same dataset, so gathered in-batch negatives stay within one task.
    Deterministic in (seed, epoch); call `set_epoch` each epoch. With drop_last=False each
    dataset's short last batch is kept: as is for one process, padded by wrapping around that
    dataset's rows when num_replicas > 1 (ranks need equal batch sizes).
    """

    def __init__(self, sizes: list[int], batch_size: int, seed: int = 0, drop_last: bool = True,
                 num_replicas: int = 1, rank: int = 0):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside 0..{num_replicas - 1}")
        self.sizes, self.batch_size, self.seed, self.drop_last = list(sizes), batch_size, seed, drop_last
        self.num_replicas, self.rank, self.epoch = num_replicas, rank, 0
        if len(self) == 0:
            raise L2VError(f"every dataset is smaller than one global batch of "
                           f"{batch_size * num_replicas} ({batch_size} x {num_replicas} processes)",
                           f"dataset sizes {self.sizes}", "lower per_device_batch_size or add data")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _global_batches(self) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        gb, out, offset = self.batch_size * self.num_replicas, [], 0
        for n in self.sizes:
            perm = torch.randperm(n, generator=g) + offset
            for i in range(0, n, gb):
                chunk = perm[i:i + gb]
                if len(chunk) < gb:
                    if self.drop_last or n == 0:
                        continue
                    if self.num_replicas > 1:  # wrap around this dataset's rows
                        chunk = perm[torch.arange(i, i + gb) % n]
                out.append(chunk)
            offset += n
        order = torch.randperm(len(out), generator=g).tolist()
        return [out[k] for k in order]

    def __iter__(self):
        b = self.batch_size
        for chunk in self._global_batches():
            yield chunk[self.rank * b:(self.rank + 1) * b].tolist()

    def __len__(self) -> int:
        gb = self.batch_size * self.num_replicas
        return sum(n // gb if self.drop_last else math.ceil(n / gb) for n in self.sizes)
