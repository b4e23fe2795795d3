"""Raw text for MNTP and SimCSE: load it from files or the Hub, tokenise it once, cut it into blocks.

    ds = load_texts(recipe.mntp.data, key="mntp.data")         # Dataset with one column "text"
    ds = tokenize_texts(ds, tokenizer, max_length=None)         # "input_ids", cached on disk
    ds = group_texts(ds, block_size=512, eos_id=tok.eos_token_id)  # MNTP blocks of exactly 512

Every bad input is one L2VError naming the file and line (or column, or config key) and the fix.
Local files become one in-memory Dataset whose fingerprint is a hash of its content, so the
tokenisation cache is keyed on what the text *is*, not on where or when it was read.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import datasets
from datasets.table import InMemoryTable

from l2v_cli.config.schema import DataConfig
from l2v_cli.data.jsonl import iter_jsonl
from l2v_cli.errors import L2VError
from l2v_cli.utils.paths import resolve_data_path, shipped_data_dir

FORMATS = {".txt": "txt", ".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}
HF_PROBE_TIMEOUT_S = 3.0  # how long we wait for the Hub before falling back to its local cache


# --------------------------------------------------------------------------- reading files


def read_utf8(path: Path) -> str:
    """The whole file as text; a non-UTF-8 byte is reported with its line number."""
    data = path.read_bytes()
    data = data[3:] if data.startswith(b"\xef\xbb\xbf") else data  # a BOM (Excel's csv exports)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise L2VError(f"{path.name} is not UTF-8 text (byte {data[e.start]:#04x} on line {line})",
                       f"{path}:{line}",
                       "re-save the file as UTF-8, e.g. iconv -f latin1 -t utf-8 IN > OUT") from None


def utf8_lines(path: Path) -> Iterator[str]:
    """The file's lines, streamed (each with its "\n"); a non-UTF-8 byte is reported with its line
    number. Split on "\n" only (not str.splitlines, which also splits on \x0b, \x1c, \u2028... and
    would make our line numbers disagree with every editor)."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a BOM (Excel's csv exports)
                raw = raw[3:]
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise L2VError(f"{path.name} is not UTF-8 text (byte {raw[e.start]:#04x} on line {n})",
                               f"{path}:{n}",
                               "re-save the file as UTF-8, e.g. iconv -f latin1 -t utf-8 IN > OUT") from None


def _lines(path: Path) -> Iterator[str]:
    return (ln.rstrip("\n").rstrip("\r") for ln in utf8_lines(path))


def iter_records(path: Path, fmt: str, columns: list[str] | None = None) -> Iterator[tuple[str, dict]]:
    """(where, row) for each row of a jsonl/csv/parquet file, streamed; `where` is "file:line" (or
    row). `columns` limits what parquet reads (a column store need not load the rest)."""
    if fmt == "jsonl":
        for n, row in iter_jsonl(_lines(path), path, 'write one JSON object per line, e.g. {"text": "..."}'):
            yield f"{path}:{n}", row
    elif fmt == "csv":
        csv.field_size_limit(sys.maxsize)  # paragraphs can exceed the 128 KiB default
        reader = csv.DictReader(utf8_lines(path))
        for row in reader:
            yield f"{path}:{reader.line_num}", row
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        i = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=10_000, columns=columns):
            for row in batch.to_pylist():
                i += 1
                yield f"{path} row {i}", row
    else:
        raise ValueError(fmt)


def file_columns(path: Path, fmt: str) -> list[str] | None:
    """Column names from the header (csv) or schema (parquet); None for jsonl (per-line keys)."""
    if fmt == "csv":
        return next(csv.reader(utf8_lines(path)), [])
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(path).schema_arrow.names)
    return None


def _text_of(row: dict, column: str, where: str) -> str:
    value = row.get(column)
    if value is None or isinstance(value, str):
        return (value or "").strip()
    raise L2VError(f"column '{column}' holds a {type(value).__name__}, not text", where,
                   f"put a string in '{column}' or choose another column with text_column=...")


def _iter_file(path: Path, fmt: str, column: str) -> Iterator[str]:
    """The stripped, non-empty texts of one file, streamed."""
    if fmt == "txt":
        texts = (ln.strip() for ln in _lines(path))
    else:
        cols = file_columns(path, fmt)
        if cols is not None and column not in cols:
            raise L2VError(f"{path.name} has no column '{column}' (columns: {', '.join(cols)})",
                           str(path), f"set text_column to one of: {', '.join(cols)}")

        def rows():
            for where, row in iter_records(path, fmt, [column]):
                if column not in row:
                    raise L2VError(f"no key '{column}' in this row (keys: {', '.join(row)})", where,
                                   f"set text_column to one of: {', '.join(row)}")
                yield _text_of(row, column, where)

        texts = rows()
    any_text = False
    for t in texts:
        if t:
            any_text = True
            yield t
    if not any_text:
        raise L2VError(f"{path.name} holds no text", str(path),
                       "give a file with at least one non-empty line / row")


def _format_of(path: Path, fmt: str) -> str:
    if fmt in ("txt", "jsonl", "csv", "parquet"):
        return fmt
    if path.suffix.lower() in FORMATS:
        return FORMATS[path.suffix.lower()]
    raise L2VError(f"unknown file type '{path.suffix}' for {path.name}", str(path),
                   f"use one of {', '.join(FORMATS)} or set format: txt|jsonl|csv|parquet")


def data_files(path: Path) -> list[Path]:
    """A file, or every supported file in a directory (recursively, sorted: a stable order)."""
    if path.is_file():
        return [path]
    found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FORMATS)
    if not found:
        raise L2VError(f"no {'/'.join(FORMATS)} files in directory {path}", str(path),
                       "put data files in it or point path at a file")
    return found


def looks_local(name: str) -> bool:
    """A path-like string (not a hub name): has a data-file suffix or starts like a path."""
    # hub names are "name" or "owner/name" (+ ":config"): one slash at most, no file suffix
    return (Path(name).suffix.lower() in FORMATS or name.startswith(("/", ".", "~", "data/"))
            or name.count("/") > 1 or "\\" in name)


def missing_path_error(name: str, key: str) -> L2VError:
    p = Path(name).expanduser()
    looked = [str(p.resolve())]
    if not p.is_absolute() and p.parts and p.parts[0] == "data":
        looked.append(str(shipped_data_dir().joinpath(*p.parts[1:])))
    return L2VError(f"data not found: {name}", f"key {key}.path; looked in " + " and ".join(looked),
                    "check the path (relative paths are from the working directory), or set "
                    "format: hub for a Hugging Face dataset")


# --------------------------------------------------------------------------- the Hub


def _hub_reachable() -> bool:
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"),
                               timeout=HF_PROBE_TIMEOUT_S)
    except urllib.error.HTTPError:
        return True  # an answer, even an error status, means the network works
    except Exception:
        return False
    return True


def load_hub(name: str, split: str, key: str = "data") -> datasets.Dataset:
    """`owner/name` or `owner/name:config` from the Hub (or its local cache when offline).

    huggingface_hub retries an unreachable Hub for ~25 s; a 3 s probe first, then a cache-only
    load, makes "no network" a fast, clear error instead."""
    from huggingface_hub import constants

    import datasets.config as dcfg

    repo, _, config = name.partition(":")
    offline = dcfg.HF_HUB_OFFLINE or not _hub_reachable()
    saved = dcfg.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    dcfg.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = offline
    try:
        return datasets.load_dataset(repo, config or None, split=split)
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if offline and isinstance(e, ConnectionError):
            what = (f"hub dataset '{name}' is not in the local HF cache and the Hub is unreachable "
                    "(no network, or HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set)")
            fix = "give a local file or directory (no such local path exists), or run once online"
        else:
            what = f"cannot load hub dataset '{name}' split '{split}': {reason}"
            fix = "check the dataset name, 'name:config' and split (or give a local path)"
        raise L2VError(what, f"key {key}.path", fix) from None
    finally:
        dcfg.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


def _iter_hub(ds: datasets.Dataset, name: str, column: str, key: str) -> Iterator[str]:
    if column not in ds.column_names:
        raise L2VError(f"hub dataset '{name}' has no column '{column}' "
                       f"(columns: {', '.join(ds.column_names)})", f"key {key}.text_column",
                       f"set {key}.text_column to one of: {', '.join(ds.column_names)}")
    for batch in ds.select_columns([column]).iter(batch_size=10_000):
        for t in batch[column]:
            if isinstance(t, str) and t.strip():
                yield t.strip()


# --------------------------------------------------------------------------- load_texts


def content_key(ds: datasets.Dataset) -> str:
    """A hash of what a Dataset holds — its length, column names and Arrow buffers, read through the
    public `Dataset.data` table — for cache keys: equal content built the same way gives the same
    key in every run."""
    files = ds.cache_files
    if len(files) == 1 and _KEYED.match(Path(files[0]["filename"]).name):
        return _KEYED.match(Path(files[0]["filename"]).name).group(2)  # written by us, named by its key
    h = hashlib.sha256(str(len(ds)).encode())
    table = ds.data.table
    for name in table.column_names:
        h.update(f"\x00{name}\x00".encode())
        for chunk in table.column(name).chunks:
            for buf in chunk.buffers():
                if buf is not None:
                    h.update(memoryview(buf))
    return h.hexdigest()[:32]


def content_dataset(columns: dict[str, list]) -> datasets.Dataset:
    """An in-memory Dataset whose fingerprint is a hash of its content (stable across runs)."""
    h = hashlib.sha256()
    for name, values in columns.items():
        h.update(f"\x00{name}\x00{len(values)}".encode())
        for v in values:
            h.update(str(v).encode() + b"\x00")
    return datasets.Dataset(InMemoryTable.from_pydict(columns), fingerprint=h.hexdigest()[:32])


TEXT_FEATURES = datasets.Features({"text": datasets.Value("string")})
_KEYED = re.compile(r"^(texts|tokens|blocks)-([0-9a-f]{32})\.arrow$")  # our cache files carry their key
STREAM_BATCH = 10_000  # texts per Arrow record batch while streaming a corpus to disk
LOADER_VERSION = 1  # bump when what load_texts keeps from a file changes


def _sources(cfg: DataConfig, key: str):
    """(label, stat, texts iterator factory) per source: files are streamed, hub data sets are read
    from their memory-mapped cache. `stat` identifies the source's bytes without reading them."""
    paths = cfg.path if isinstance(cfg.path, list) else [cfg.path] if cfg.path else []
    if not paths:
        raise L2VError(f"no data: {key}.path is empty", f"key {key}.path",
                       f"set {key}.path to a file, directory or hub dataset")
    out = []
    for name in paths:
        local = resolve_data_path(name)
        if cfg.format == "hub" or (not local.exists() and not looks_local(name)):
            ds = load_hub(name, cfg.split, key)
            stat = [name, cfg.split, [(f["filename"], Path(f["filename"]).stat().st_size) for f in ds.cache_files]]
            out.append((name, stat, lambda ds=ds, name=name: _iter_hub(ds, name, cfg.text_column, key)))
        elif not local.exists():
            raise missing_path_error(name, key)
        else:
            for f in data_files(local):
                st = f.stat()
                fmt = _format_of(f, cfg.format)
                out.append((str(f), [str(f.resolve()), st.st_size, st.st_mtime_ns, fmt],
                            lambda f=f, fmt=fmt: _iter_file(f, fmt, cfg.text_column)))
    return paths, out


def load_texts(cfg: DataConfig, key: str = "data", cache_dir: str | Path | None = None) -> datasets.Dataset:
    """One column "text" (stripped, non-empty) from `cfg.path`: file, directory, list, or hub name.

    The texts are streamed into a memory-mapped Arrow file (`cache_dir/texts-<content hash>.arrow`),
    never held as a Python list, so a corpus larger than memory works; a second call with the same
    files (path, size, mtime) opens that file without reading the sources again. `key` is the config
    section (e.g. "mntp.data"), used to name the setting in errors."""
    import pyarrow as pa

    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    paths, sources = _sources(cfg, key)
    index = cache_dir / f"texts-index-{_hash(LOADER_VERSION, cfg.text_column, cfg.max_samples, [s[1] for s in sources])}.json"
    try:
        known = cache_dir / f"texts-{json.loads(index.read_text())['key']}.arrow"
        if known.exists():
            return datasets.Dataset.from_file(str(known))
    except (OSError, ValueError, KeyError):
        pass
    h, n, limit = hashlib.sha256(), 0, cfg.max_samples
    schema = TEXT_FEATURES.arrow_schema
    fd, tmp = tempfile.mkstemp(prefix=".texts-", suffix=".arrow.tmp", dir=cache_dir)
    try:
        with os.fdopen(fd, "wb") as f, pa.ipc.new_stream(f, schema) as writer:
            batch: list[str] = []
            for _, _, texts in sources:
                for t in texts():
                    h.update(t.encode() + b"\x00")
                    batch.append(t)
                    n += 1
                    if len(batch) == STREAM_BATCH:
                        writer.write_batch(pa.record_batch([pa.array(batch, pa.string())], schema=schema))
                        batch = []
                    if limit and n >= limit:
                        break
                if limit and n >= limit:
                    break  # later sources would be cut anyway
            if batch:
                writer.write_batch(pa.record_batch([pa.array(batch, pa.string())], schema=schema))
        if n == 0:
            raise L2VError(f"no text in {', '.join(map(str, paths))}", f"key {key}.path",
                           "give data with at least one non-empty text")
        content = _hash("texts", n, h.hexdigest())
        final = cache_dir / f"texts-{content}.arrow"
        os.replace(tmp, final)
        itmp = index.with_suffix(f".{os.getpid()}.tmp")
        itmp.write_text(json.dumps({"key": content, "texts": n}))
        os.replace(itmp, index)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return datasets.Dataset.from_file(str(final))


# --------------------------------------------------------------------------- tokenisation


def _hash(*parts) -> str:
    return hashlib.sha256("\x00".join(map(str, parts)).encode()).hexdigest()[:32]


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that changes token ids: vocab, merges, normalizer, BOS/EOS rules."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # minus the truncation/padding state that each call leaves behind
        body = json.loads(backend.to_str())
        body = json.dumps({k: v for k, v in body.items() if k not in ("truncation", "padding")})
    else:  # slow tokenizer: the vocab and its BOS/EOS switches
        body = json.dumps(sorted(tokenizer.get_vocab().items())) + str(
            (getattr(tokenizer, "add_bos_token", None), getattr(tokenizer, "add_eos_token", None)))
    return _hash(type(tokenizer).__name__, body, sorted(tokenizer.special_tokens_map.items()))


def default_cache_dir() -> Path:
    from l2v_cli.modeling.aliases import cache_root

    return cache_root() / "tokenized"


@contextlib.contextmanager
def quiet_datasets():
    """No progress bars from datasets' own `map` ("Tokenizing: 0%|...") while l2v shows its own
    progress; the setting the caller had is restored afterwards."""
    was = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was:
            datasets.enable_progress_bars()


TOKEN_FEATURES = datasets.Features({"input_ids": datasets.List(datasets.Value("int32"))})  # 1/2 of int64


def tokenize_texts(ds: datasets.Dataset, tokenizer, max_length: int | None,
                   cache_dir: str | Path | None = None, num_proc: int | None = None) -> datasets.Dataset:
    """Column "input_ids" (int32), with the tokenizer's BOS/EOS; truncated to max_length unless None.

    Use max_length=None before `group_texts` (nothing is lost), an int for SimCSE / supervised.
    The result is written to `cache_dir/tokens-<key>.arrow`, key = (tokenizer, max_length, data
    fingerprint), and a second call with the same key loads it without tokenising. In distributed
    runs call it on the main process first (the others then hit the cache)."""
    key = _hash(tokenizer_fingerprint(tokenizer), max_length, content_key(ds))
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)

    def tokenize(batch):
        enc = tokenizer(batch["text"], truncation=max_length is not None, max_length=max_length,
                        verbose=False)  # verbose=False: no "longer than model_max_length" warning
        return {"input_ids": enc["input_ids"]}

    with quiet_datasets():
        return ds.map(tokenize, batched=True, remove_columns=ds.column_names, features=TOKEN_FEATURES,
                      cache_file_name=str(cache_dir / f"tokens-{key}.arrow"), load_from_cache_file=True,
                      new_fingerprint=key, num_proc=num_proc)


def group_texts(ds: datasets.Dataset, block_size: int, eos_id: int | None) -> datasets.Dataset:
    """Concatenate the token lists (each followed by EOS unless it already ends with one) and cut
    the stream into blocks of exactly `block_size`, as run_mlm.py does: per map batch of 1000
    texts, the tail shorter than a block is dropped."""

    def group(batch):
        flat: list[int] = []
        for ids in batch["input_ids"]:
            flat += ids
            if eos_id is not None and (not ids or ids[-1] != eos_id):
                flat.append(eos_id)
        n = len(flat) // block_size * block_size
        return {"input_ids": [flat[i:i + block_size] for i in range(0, n, block_size)]}

    key = _hash(content_key(ds), "group", block_size, eos_id)
    cached = ds.cache_files  # next to the tokenised file when there is one; else in memory
    name = str(Path(cached[0]["filename"]).with_name(f"blocks-{key}.arrow")) if cached else None
    with quiet_datasets():
        out = ds.map(group, batched=True, batch_size=1000, remove_columns=ds.column_names,
                     features=TOKEN_FEATURES, cache_file_name=name, new_fingerprint=key)
    if len(out) == 0:
        raise L2VError(f"the data is shorter than one block of {block_size} tokens",
                       f"block_size {block_size}", "use more data or a smaller max_seq_length")
    return out
