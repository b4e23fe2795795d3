"""Encoding: pooling methods, tokenisation layout, batch invariance, the Encoder API and `l2v encode`.

Read as a spec: each test states one behaviour with exact expected values where they exist.
Tiny random models (2 layers, width 64) in fp32 keep the whole file to a few seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from l2v_cli.encoding import POOLING_METHODS, Encoder
from l2v_cli.encoding.pooling import pool, pool_weights
from l2v_cli.errors import L2VError
from l2v_cli.modeling.loading import load_model
from l2v_cli.modeling.tiny import save_tiny_model

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {arch: save_tiny_model(arch, root / arch) for arch in ("llama", "qwen2")}


@pytest.fixture(scope="module")
def llama(tiny_dirs) -> Encoder:
    return Encoder.from_pretrained(tiny_dirs["llama"], dtype="float32")


def cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# --------------------------------------------------------------------------- pooling on toy tensors
# Two rows, four positions, 2-dim states. Row 0 is right-padded (3 real tokens), row 1 is
# left-padded (1 pad, then 3 real tokens) holding the SAME three states: every method must give
# the same vector for both rows.
H = torch.tensor([
    [[1.0, 0.0], [2.0, 4.0], [4.0, 8.0], [99.0, 99.0]],
    [[99.0, 99.0], [1.0, 0.0], [2.0, 4.0], [4.0, 8.0]],
])
M = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])


def test_pool_mean_is_plain_average_of_pooled_tokens():
    expected = torch.tensor([7 / 3, 12 / 3])  # ([1,0] + [2,4] + [4,8]) / 3
    out = pool(H, M, "mean")
    assert out.dtype == torch.float32 and out.shape == (2, 2)
    torch.testing.assert_close(out, expected.expand(2, 2))


def test_pool_weighted_mean_weights_grow_linearly_over_pooled_tokens():
    # weights 1, 2, 3 over the three real tokens, divided by 6 — wherever the padding is
    expected = torch.tensor([(1 * 1 + 2 * 2 + 3 * 4) / 6, (1 * 0 + 2 * 4 + 3 * 8) / 6])
    torch.testing.assert_close(pool(H, M, "weighted_mean"), expected.expand(2, 2))
    torch.testing.assert_close(pool_weights(M, "weighted_mean")[0], torch.tensor([1 / 6, 2 / 6, 3 / 6, 0]))
    torch.testing.assert_close(pool_weights(M, "weighted_mean")[1], torch.tensor([0, 1 / 6, 2 / 6, 3 / 6]))


@pytest.mark.parametrize("method", ["last_token", "eos"])
def test_pool_last_token_takes_last_real_token_for_left_and_right_padding(method):
    torch.testing.assert_close(pool(H, M, method), torch.tensor([[4.0, 8.0], [4.0, 8.0]]))


def test_pool_bos_takes_first_real_token_for_left_and_right_padding():
    torch.testing.assert_close(pool(H, M, "bos"), torch.tensor([[1.0, 0.0], [1.0, 0.0]]))


def test_pool_only_reads_the_pool_mask_and_never_leaks_nan_from_padding():
    h = H.clone()
    h[0, 3] = float("nan")
    h[1, 0] = float("inf")
    # pool mask excluding the first real token (as an instruction would be excluded)
    pm = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 1]])
    torch.testing.assert_close(pool(h, pm, "mean"), torch.tensor([[3.0, 6.0], [3.0, 6.0]]))
    torch.testing.assert_close(pool(h, pm, "bos"), torch.tensor([[2.0, 4.0], [2.0, 4.0]]))
    for method in POOLING_METHODS:
        assert torch.isfinite(pool(h, pm, method)).all(), method


def test_pool_empty_row_gives_zeros_and_bf16_input_gives_fp32():
    pm = torch.tensor([[0, 0, 0, 0], [0, 1, 1, 1]])
    for method in POOLING_METHODS:
        out = pool(H.bfloat16(), pm, method)
        assert out.dtype == torch.float32
        assert torch.equal(out[0], torch.zeros(2)), method


def test_pool_unknown_method_is_an_error_with_a_suggestion():
    with pytest.raises(L2VError, match="did you mean 'mean'"):
        pool(H, M, "meen")


def test_pool_is_differentiable():
    h = H.clone().requires_grad_(True)
    pool(h, M, "weighted_mean").sum().backward()
    assert h.grad is not None and h.grad[0, 3].abs().sum() == 0  # padding gets no gradient


# --------------------------------------------------------------------------- tokenisation layout
def test_tokenize_without_instruction_is_exactly_the_tokenizers_own_output(llama):
    tok = llama.tokenizer
    for text in ["hello world", "", "Ünïcödé 😀"]:
        [item] = llama.tokenize([text])
        assert item.ids == tok(text)["input_ids"]
        assert item.pool_start == 0  # BOS included, as in sentence-transformers mean pooling
    assert llama.prefix == [tok.bos_token_id] and llama.suffix == []


def test_eos_pooling_appends_the_tokenizers_real_eos_id(tiny_dirs):
    enc = Encoder.from_pretrained(tiny_dirs["llama"], pooling="eos", dtype="float32")
    tok = enc.tokenizer
    [item] = enc.tokenize(["hello world"])
    assert item.ids == tok("hello world")["input_ids"] + [tok.eos_token_id]
    assert item.ids.count(tok.eos_token_id) == 1  # one real token, not the text " </s>"
    # truncation keeps room for the EOS
    enc.max_length = 4
    [item] = enc.tokenize(["one two three four five six seven"])
    assert len(item.ids) == 4 and item.ids[0] == tok.bos_token_id and item.ids[-1] == tok.eos_token_id


def test_truncation_shortens_the_text_and_keeps_the_instruction(llama):
    tok = llama.tokenizer
    instr, text = "Represent this:\n", "one two three four five six seven eight"
    instr_ids = tok(instr, add_special_tokens=False)["input_ids"]
    joined = tok(instr + text, add_special_tokens=False)["input_ids"]
    assert joined[:len(instr_ids)] == instr_ids  # a newline ends the instruction at a token boundary
    enc = Encoder(llama.model, tok, max_length=1 + len(instr_ids) + 3)
    [item] = enc.tokenize([text], instruction=instr)
    assert item.ids == [tok.bos_token_id] + joined[:len(instr_ids) + 3]
    assert item.pool_start == 1 + len(instr_ids)
    with pytest.raises(L2VError, match="instruction"):
        Encoder(llama.model, tok, max_length=len(instr_ids)).tokenize(["x"], instruction=instr)


def test_instruction_is_attended_but_excluded_from_pooling(llama):
    tok, text, instr = llama.tokenizer, "a cat sat on the mat", "Retrieve similar text: "
    with_instr = llama.encode([text], instruction=instr)[0]
    without = llama.encode([text])[0]
    assert cos_rows(with_instr[None], without[None])[0] < 0.9999  # the instruction changed the states

    # Manual computation, as sentence-transformers does it with a prompt: [BOS] + tok(instruction +
    # text) as ONE string; the first len(tok(instruction)) tokens ([BOS] included) are not pooled.
    ids = torch.tensor([tok(instr + text)["input_ids"]])
    n_prompt = len(tok(instr)["input_ids"])
    with torch.no_grad():
        h = llama.model(input_ids=ids).last_hidden_state[0]
    manual = h[n_prompt:].mean(0).numpy()
    np.testing.assert_allclose(with_instr, manual, rtol=1e-4, atol=1e-5)
    # control: tokenised apart ([BOS] + tok(instruction) + tok(text)) is a different input here,
    # since the tokenizer glues the instruction's trailing space to the text's first word
    apart = [tok.bos_token_id] + tok(instr, add_special_tokens=False)["input_ids"] + tok(text, add_special_tokens=False)["input_ids"]
    assert apart != ids[0].tolist()


# --------------------------------------------------------------------------- invariance and order
TEXTS = [
    "short",
    "a somewhat longer sentence about nothing in particular",
    "",
    "medium length text here",
    "the quick brown fox jumps over the lazy dog " * 6,
    "x",
]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidirectional"])
def test_embedding_is_the_same_alone_or_in_a_mixed_batch_left_or_right_padded(tiny_dirs, arch, bidirectional):
    loaded = load_model(tiny_dirs[arch], dtype="float32", bidirectional=bidirectional)
    for pooling in ("mean", "last_token", "weighted_mean"):
        enc = Encoder(loaded.model, loaded.tokenizer, pooling=pooling)
        alone = np.stack([enc.encode([t])[0] for t in TEXTS])
        for side in ("right", "left"):
            enc.padding_side = side
            batched = enc.encode(TEXTS, batch_size=4)
            c = cos_rows(alone, batched)
            assert c.min() >= 0.9999, (arch, bidirectional, pooling, side, c)


def test_output_rows_follow_input_order(llama):
    texts = [f"text number {i} " + "word " * (i * 7 % 11) for i in range(10)]
    out = llama.encode(texts, batch_size=3)
    rev = llama.encode(texts[::-1], batch_size=3)
    np.testing.assert_allclose(out[::-1], rev, atol=1e-5)
    for i in (0, 4, 9):
        np.testing.assert_allclose(out[i], llama.encode([texts[i]])[0], atol=1e-5)


def test_encode_returns_float32_n_by_d_and_normalize_gives_unit_rows(llama):
    out = llama.encode(["a", "b c"], normalize=True)
    assert out.dtype == np.float32 and out.shape == (2, llama.dim) == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert llama.encode([]).shape == (0, 64)
    assert llama.encode("single").shape == (1, 64)


def test_causal_lm_model_is_run_without_its_head(tiny_dirs, llama):
    loaded = load_model(tiny_dirs["llama"], dtype="float32", lm_head=True)
    enc = Encoder(loaded.model, loaded.tokenizer)
    assert enc._backbone is not loaded.model and enc._backbone.get_output_embeddings() is None
    np.testing.assert_allclose(enc.encode(TEXTS), llama.encode(TEXTS), atol=1e-5)


# --------------------------------------------------------------------------- odd inputs
WEIRD = ["", " ", "\n\t\r", "\x00", "a\x00b", "😀🙂🚀" * 50, "\u202eRTL override", "\ud800lone surrogate",
         "字" * 3000, "word " * 20000, "</s>", "<s><pad>"]


@pytest.mark.parametrize("pooling", POOLING_METHODS)
def test_empty_and_weird_strings_encode_without_error(llama, pooling):
    enc = Encoder(llama.model, llama.tokenizer, pooling=pooling, max_length=64)
    out = enc.encode(WEIRD, batch_size=5)
    assert out.shape == (len(WEIRD), 64) and np.isfinite(out).all()
    assert np.abs(out).sum(1).min() > 0  # every row has something pooled
    out_i = enc.encode(WEIRD, batch_size=5, instruction="Query: ")
    assert np.isfinite(out_i).all() and np.abs(out_i).sum(1).min() > 0


def test_empty_text_without_bos_uses_one_eos_token(tiny_dirs):
    loaded = load_model(tiny_dirs["qwen2"], dtype="float32")
    tok = loaded.tokenizer
    tok.add_bos_token = False  # a tokenizer that adds no special tokens at all (like Qwen2's)
    assert tok("")["input_ids"] == []
    enc = Encoder(loaded.model, tok)
    [item] = enc.tokenize([""])
    assert item.ids == [tok.eos_token_id] and item.pool_start == 0
    [item] = enc.tokenize([""], instruction="Query: ")
    assert item.ids[-1] == tok.eos_token_id and item.pool_start == len(item.ids) - 1
    assert np.isfinite(enc.encode(["", "x"])).all()


def test_non_string_input_is_a_one_line_error(llama):
    with pytest.raises(L2VError, match="text #1 is a int"):
        llama.encode(["ok", 3])


# --------------------------------------------------------------------------- CLI
def l2v(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "l2v_cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd or REPO, timeout=120)


def test_cli_encode_writes_npy_matching_the_python_api(tiny_dirs, tmp_path):
    texts = ["hello world", "", "second line 😀", "the quick brown fox"]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(texts)),
                                       encoding="utf-8")
    out = tmp_path / "sub" / "out.npy"
    r = l2v("encode", tiny_dirs["llama"], "--input", tmp_path / "in.txt", "--output", out, "--dtype", "float32",
            "--pooling", "weighted_mean", "--normalize", "--instruction", "Query: ", "--batch-size", "2")
    assert r.returncode == 0, r.stderr
    assert "4 texts" in r.stderr and "sentences/s" in r.stderr
    got = np.load(out)
    enc = Encoder.from_pretrained(tiny_dirs["llama"], pooling="weighted_mean", dtype="float32")
    expected = enc.encode(texts, instruction="Query: ", normalize=True)
    assert got.shape == (4, 64) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert [p.name for p in out.parent.iterdir()] == ["out.npy"]  # no temp file left behind

    # .jsonl input gives the same texts (so the same rows) as the .txt file
    from l2v_cli.cli.encode_cmd import read_texts

    assert read_texts(tmp_path / "in.jsonl") == read_texts(tmp_path / "in.txt") == texts


CLI_ERRORS = {
    # name: (file name, file bytes, extra args, text the one-line error must contain)
    "non_utf8": ("in.txt", b"fine\nalso fine\ncaf\xe9\n", [], "line 3 is not valid UTF-8"),
    "jsonl_not_json": ("in.jsonl", b'{"text": "a"}\n{oops\n', [], "in.jsonl:2"),
    "jsonl_no_text": ("in.jsonl", b'{"text": "a"}\n\n{"body": "b"}\n', [], "line 3 has no 'text' key"),
    "jsonl_text_not_string": ("in.jsonl", b'{"text": 5}\n', [], "'text' is a JSON number, not a string"),
    "empty_file": ("in.txt", b"", [], "is empty"),
    "blank_file": ("in.txt", b"\n  \n", [], "is empty"),
    "missing_file": (None, None, [], "does not exist"),
    "unknown_pooling": ("in.txt", b"a\n", ["--pooling", "avg_mean"], "unknown pooling method 'avg_mean'"),
    "output_not_writable": ("in.txt", b"a\n", ["--output", "{blocker}/out.npy"], "is a file, not a folder"),
    "output_not_npy": ("in.txt", b"a\n", ["--output", "{tmp}/out.csv"], "must end in .npy"),
    "bad_input_type": ("in.csv", b"a\n", [], "unsupported input file type"),
}


@pytest.mark.parametrize("case", list(CLI_ERRORS))
def test_cli_encode_errors_are_one_line_without_traceback(tiny_dirs, tmp_path, case):
    name, data, extra, expected = CLI_ERRORS[case]
    inp = tmp_path / (name or "missing.txt")
    if data is not None:
        inp.write_bytes(data)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    extra = [a.format(blocker=blocker, tmp=tmp_path) for a in extra]
    args = ["encode", tiny_dirs["llama"], "--input", inp]
    if "--output" not in extra:
        args += ["--output", tmp_path / "out.npy"]
    r = l2v(*args, *extra)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("l2v: error: "), r.stderr
    assert expected in lines[0], lines[0]
    if case == "non_utf8":
        assert f"{inp}:3" in lines[0]
    assert not (tmp_path / "out.npy").exists()
