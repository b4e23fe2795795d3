"""Spec: every supported input loads into the same shape, every bad input is one error naming the
file, line, column or key, tokenisation is cached, and supervised batches never mix datasets."""

import json

import pytest

from l2v_cli.config.schema import DataConfig, SupervisedConfig
from l2v_cli.data.pairs import OneDatasetBatchSampler, TripletRows, load_supervised
from l2v_cli.data.text import content_dataset, group_texts, load_texts, tokenize_texts
from l2v_cli.errors import L2VError
from l2v_cli.utils.paths import shipped_data_dir


def texts(path, **kw):
    return load_texts(DataConfig(path=str(path) if not isinstance(path, list) else path, **kw))["text"]


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from l2v_cli.modeling.tiny import tokenizer_dir

    return AutoTokenizer.from_pretrained(tokenizer_dir())


# --------------------------------------------------------------------------- formats


def test_txt_one_text_per_line_stripped_blank_lines_dropped(tmp_path):
    f = write(tmp_path / "a.txt", "  first line \n\n\tsecond\r\n   \nthird")
    assert texts(f) == ["first line", "second", "third"]


def test_jsonl_text_column(tmp_path):
    f = write(tmp_path / "a.jsonl", '{"body": " x ", "id": 1}\n\n{"body": "y"}\n{"body": ""}\n')
    assert texts(f, text_column="body") == ["x", "y"]


def test_csv(tmp_path):
    f = write(tmp_path / "a.csv", 'id,text\n1,"hello, world"\n2,"two\nlines"\n')
    assert texts(f) == ["hello, world", "two\nlines"]


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a", " b ", None], "n": [1, 2, 3]}), tmp_path / "a.parquet")
    assert texts(tmp_path / "a.parquet") == ["a", "b"]


def test_directory_reads_every_supported_file_in_sorted_order(tmp_path):
    write(tmp_path / "b.jsonl", '{"text": "from jsonl"}\n')
    write(tmp_path / "a.txt", "from txt\n")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "c.txt", "nested\n")
    write(tmp_path / "notes.md", "ignored\n")
    assert texts(tmp_path) == ["from txt", "from jsonl", "nested"]


def test_list_of_paths_and_max_samples(tmp_path):
    a, b = write(tmp_path / "a.txt", "1\n2\n"), write(tmp_path / "b.txt", "3\n4\n")
    assert texts([str(a), str(b)]) == ["1", "2", "3", "4"]
    assert texts([str(a), str(b)], max_samples=3) == ["1", "2", "3"]


def test_recipe_paths_fall_back_to_the_shipped_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./data here
    assert len(texts("data/unsup/wiki_sentences.txt", max_samples=10)) == 10


def test_format_overrides_the_suffix(tmp_path):
    f = write(tmp_path / "corpus.data", '{"text": "a"}\n')
    assert texts(f, format="jsonl") == ["a"]
    with pytest.raises(L2VError, match="unknown file type '.data'"):
        texts(f)


def test_same_content_same_cache_key(tmp_path):
    from l2v_cli.data.text import content_key

    a = write(tmp_path / "a.txt", "x\ny\n")
    b = write(tmp_path / "b.jsonl", '{"text": "x"}\n{"text": "y"}\n')
    c = write(tmp_path / "c.txt", "x\nz\n")
    fp = [content_key(load_texts(DataConfig(path=str(p)))) for p in (a, b, c)]
    assert fp[0] == fp[1] != fp[2]


def test_hub_name_without_network_is_a_fast_clear_error(monkeypatch):
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # as HF_DATASETS_OFFLINE=1 does
    with pytest.raises(L2VError, match=r"hub dataset 'someone/corpus:en'.*key mntp\.data\.path"):
        load_texts(DataConfig(path="someone/corpus:en"), key="mntp.data")


# --------------------------------------------------------------------------- bad inputs


def test_missing_file_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(L2VError) as e:
        texts("data/unsup/nope.txt")
    msg = str(e.value)
    assert "data not found: data/unsup/nope.txt" in msg
    assert str(tmp_path / "data/unsup/nope.txt") in msg  # the working directory...
    assert str(shipped_data_dir() / "unsup" / "nope.txt") in msg  # ...and the shipped data
    assert "key data.path" in msg


def test_empty_file(tmp_path):
    f = write(tmp_path / "empty.txt", "\n  \n")
    with pytest.raises(L2VError, match=r"empty\.txt holds no text"):
        texts(f)


def test_non_utf8_names_file_and_line(tmp_path):
    f = tmp_path / "latin.txt"
    f.write_bytes("ok\nstill ok\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(L2VError) as e:
        texts(f)
    assert "not UTF-8" in str(e.value) and e.value.where == f"{f}:3"


def test_bad_json_line_names_file_and_line(tmp_path):
    f = write(tmp_path / "a.jsonl", '{"text": "a"}\n{"text": "b",}\n')
    with pytest.raises(L2VError, match="line 2 is not valid JSON") as e:
        texts(f)
    assert e.value.where == f"{f}:2"


def test_missing_column_jsonl_names_column_and_available_keys(tmp_path):
    f = write(tmp_path / "a.jsonl", '{"text": "a"}\n{"sentence": "b", "id": 2}\n')
    with pytest.raises(L2VError, match=r"no key 'text' in this row \(keys: sentence, id\)") as e:
        texts(f)
    assert e.value.where == f"{f}:2"


def test_missing_column_csv_names_column_and_header(tmp_path):
    f = write(tmp_path / "a.csv", "id,sentence\n1,x\n")
    with pytest.raises(L2VError, match=r"a\.csv has no column 'text' \(columns: id, sentence\)"):
        texts(f)


def test_non_text_value(tmp_path):
    f = write(tmp_path / "a.jsonl", '{"text": ["a", "b"]}\n')
    with pytest.raises(L2VError, match="column 'text' holds a list") as e:
        texts(f)
    assert e.value.where == f"{f}:1"


def test_empty_path():
    with pytest.raises(L2VError, match=r"simcse\.data\.path is empty"):
        load_texts(DataConfig(path=None), key="simcse.data")


# --------------------------------------------------------------------------- tokens


def test_group_texts_cuts_exact_blocks_separated_by_eos():
    ds = content_dataset({"input_ids": [[1, 2, 3], [4, 5, 9], [6, 7, 8, 10]]})
    blocks = group_texts(ds, block_size=4, eos_id=9)["input_ids"]
    # 1 2 3 EOS | 4 5 9 (already ends with EOS) | 6 7 8 10 EOS -> 12 tokens, 3 blocks
    assert blocks == [[1, 2, 3, 9], [4, 5, 9, 6], [7, 8, 10, 9]]
    assert group_texts(ds, block_size=5, eos_id=9)["input_ids"] == [[1, 2, 3, 9, 4], [5, 9, 6, 7, 8]]
    with pytest.raises(L2VError, match="shorter than one block of 64"):
        group_texts(ds, block_size=64, eos_id=9)


def test_tokenize_keeps_bos_and_truncates(tmp_path, tok):
    ds = load_texts(DataConfig(path=str(write(tmp_path / "a.txt", "hello world\n" + "word " * 50))))
    full = tokenize_texts(ds, tok, None, cache_dir=tmp_path / "cache")["input_ids"]
    cut = tokenize_texts(ds, tok, 8, cache_dir=tmp_path / "cache")["input_ids"]
    assert full[0] == tok("hello world")["input_ids"] and full[0][0] == tok.bos_token_id
    assert len(full[1]) > 50 and len(cut[1]) == 8 and cut[0] == full[0]


def test_tokenisation_cache_is_reused(tmp_path, tok, monkeypatch):
    ds = load_texts(DataConfig(path=str(write(tmp_path / "a.txt", "one\ntwo\nthree\n"))))
    first = tokenize_texts(ds, tok, 16, cache_dir=tmp_path / "cache")
    [cache] = first.cache_files
    assert cache["filename"].startswith(str(tmp_path / "cache" / "tokens-"))

    def boom(*a, **k):
        raise AssertionError("tokenizer called: the cache was not used")

    monkeypatch.setattr(type(tok), "__call__", boom)  # a rerun must not tokenise at all
    again = tokenize_texts(load_texts(DataConfig(path=str(tmp_path / "a.txt"))), tok, 16,
                           cache_dir=tmp_path / "cache")
    assert again.cache_files == first.cache_files and again["input_ids"] == first["input_ids"]
    with pytest.raises(Exception, match="cache was not used"):  # a new key is a new file
        tokenize_texts(ds, tok, 32, cache_dir=tmp_path / "cache")


# --------------------------------------------------------------------------- supervised


def sup(path, **kw):
    return load_supervised(SupervisedConfig(data=DataConfig(path=str(path)), **kw))


def test_shipped_e5_directory():
    sets = {s.name: s for s in load_supervised(SupervisedConfig(data=DataConfig(path="data/supervised")))}
    assert set(sets) == {"nq", "squad", "allnli"}
    assert sets["nq"].instruction == "Given a question, retrieve Wikipedia passages that answer the question"
    assert sets["squad"].instruction == "Retrieve Wikipedia passages that answer the question"
    assert sets["allnli"].instruction.startswith("Given a premise")
    assert {k: len(s.dataset) for k, s in sets.items()} == {"nq": 5000, "squad": 3611, "allnli": 5715}
    assert sets["nq"].dataset.column_names == ["query", "positive", "negative"]


def triplet(q="q", p="p", n="n", key="query"):
    return json.dumps({key: q, "positive": p, "negative": n}) + "\n"


def test_e5_directory_instructions(tmp_path):
    write(tmp_path / "nq.jsonl", triplet() * 2)
    write(tmp_path / "mine.jsonl", triplet(key="anchor"))
    builtin = {s.name: s.instruction for s in sup(tmp_path)}  # no instructions.json: built-ins
    assert builtin == {"mine": "",
                       "nq": "Given a question, retrieve Wikipedia passages that answer the question"}
    assert {s.name: s.instruction for s in sup(tmp_path, instructions={"mine": "Do it"})} == {
        "mine": "Do it", "nq": ""}
    write(tmp_path / "instructions.json", '{"nq": "Find it"}')
    assert {s.name: s.instruction for s in sup(tmp_path)}["nq"] == "Find it"
    inst = write(tmp_path / "other.json", '{"mine": "Other"}')
    assert {s.name: s.instruction for s in sup(tmp_path, instructions=str(inst))}["mine"] == "Other"
    bad = write(tmp_path / "bad.json", '{"mine":\n "x",}')
    with pytest.raises(L2VError, match="bad.json is not valid JSON") as e:
        sup(tmp_path, instructions=str(bad))
    assert e.value.where == f"{bad}:2"


def test_single_triplet_files(tmp_path):
    [s] = sup(write(tmp_path / "pairs.jsonl", triplet("a", "b", "c", key="anchor")))
    assert s.name == "pairs" and s.instruction == ""
    assert s.dataset[0] == {"query": "a", "positive": "b", "negative": "c"}
    [s] = sup(write(tmp_path / "t.csv", "query,positive,negative\nx,y,z\n"))
    assert s.dataset["negative"] == ["z"]
    with pytest.raises(L2VError, match=r"t2\.csv has no column 'negative' \(columns: query, positive\)"):
        sup(write(tmp_path / "t2.csv", "query,positive\nx,y\n"))


def test_hub_triplets_are_one_set_named_after_the_dataset(monkeypatch):
    import datasets

    import l2v_cli.data.pairs as pairs

    def fake_hub(name, split, key):
        assert (name, split) == ("sentence-transformers/all-nli:triplet", "train")
        return datasets.Dataset.from_dict({"anchor": ["a"], "positive": ["b"], "negative": ["c"]})

    monkeypatch.setattr(pairs, "load_hub", fake_hub)
    [s] = sup("sentence-transformers/all-nli:triplet")
    assert s.name == "all-nli" and s.dataset[0] == {"query": "a", "positive": "b", "negative": "c"}


def test_missing_key_in_a_supervised_row_names_file_line_and_key(tmp_path):
    f = write(tmp_path / "nq.jsonl", triplet() + '{"query": "q", "positive": "p"}\n')
    with pytest.raises(L2VError, match=r"row has no 'negative' \(keys: query, positive\)") as e:
        sup(tmp_path)
    assert e.value.where == f"{f}:2"


# --------------------------------------------------------------------------- batching


SIZES = [50, 30, 21]


def dataset_of(i):
    return 0 if i < 50 else 1 if i < 80 else 2


def test_every_batch_from_one_dataset_and_every_row_once():
    s = OneDatasetBatchSampler(SIZES, batch_size=5, seed=0, drop_last=False)
    batches = list(s)
    assert len(batches) == len(s) == 10 + 6 + 5
    assert all(len({dataset_of(i) for i in b}) == 1 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(101))  # 21 % 5: one short batch
    dropped = list(OneDatasetBatchSampler(SIZES, batch_size=5, seed=0))
    assert all(len(b) == 5 for b in dropped) and len(dropped) == 20
    assert len({i for b in dropped for i in b}) == 100


def test_datasets_are_interleaved_and_order_depends_on_seed_and_epoch():
    s = OneDatasetBatchSampler(SIZES, batch_size=5, seed=0)
    order = [dataset_of(b[0]) for b in s]
    assert order != sorted(order)  # not dataset after dataset
    assert list(s) == list(OneDatasetBatchSampler(SIZES, batch_size=5, seed=0))
    assert list(s) != list(OneDatasetBatchSampler(SIZES, batch_size=5, seed=1))
    s.set_epoch(1)
    assert list(s) != list(OneDatasetBatchSampler(SIZES, batch_size=5, seed=0))


@pytest.mark.parametrize("drop_last", [True, False])
def test_ranks_draw_disjoint_rows_of_the_same_dataset_each_step(drop_last):
    ranks = [list(OneDatasetBatchSampler(SIZES, batch_size=4, seed=3, drop_last=drop_last,
                                         num_replicas=3, rank=r)) for r in range(3)]
    assert len({len(r) for r in ranks}) == 1  # same number of steps everywhere
    for step in zip(*ranks):
        assert all(len(b) == 4 for b in step)  # equal batch sizes (needed to gather)
        assert len({dataset_of(i) for b in step for i in b}) == 1
        if drop_last:
            assert len({i for b in step for i in b}) == 12  # disjoint across ranks
    if drop_last:  # 50 // 12 + 30 // 12 + 21 // 12 = 4 + 2 + 1 steps
        assert len(ranks[0]) == 7
        seen = [i for r in ranks for b in r for i in b]
        assert len(seen) == len(set(seen)) == 7 * 12
    else:
        assert {i for r in ranks for b in r for i in b} == set(range(101))


def test_triplet_rows_follow_the_sampler_indices(tmp_path):
    write(tmp_path / "a.jsonl", triplet("a0") + triplet("a1"))
    write(tmp_path / "b.jsonl", triplet("b0"))
    rows = TripletRows(sup(tmp_path, instructions={"b": "B"}))
    assert rows.sizes == [2, 1] and len(rows) == 3
    assert rows[2] == {"query": "b0", "positive": "p", "negative": "n", "name": "b", "instruction": "B"}
    assert rows[1]["query"] == "a1" and rows[1]["name"] == "a"


def test_batch_larger_than_every_dataset_is_an_error():
    with pytest.raises(L2VError, match="smaller than one global batch of 128"):
        OneDatasetBatchSampler([10, 20], batch_size=64, num_replicas=2)


def test_one_progress_display_datasets_bars_stay_quiet(tok, tmp_path, capfd):
    """Tokenising and grouping show no datasets progress bar ("Map: 0%|...") beside l2v's own, and
    leave datasets' setting as it was."""
    import datasets

    ds = content_dataset({"text": [f"sentence number {i} for the bar test" for i in range(50)]})
    capfd.readouterr()
    assert datasets.is_progress_bar_enabled()
    group_texts(tokenize_texts(ds, tok, max_length=None, cache_dir=tmp_path), block_size=8, eos_id=tok.eos_token_id)
    out, err = capfd.readouterr()
    assert "%|" not in err + out
    assert datasets.is_progress_bar_enabled()  # restored for whoever else uses datasets
    # control: a plain datasets map in the same process does draw a bar
    ds.map(lambda b: b, batched=True)
    assert "%|" in capfd.readouterr().err
