"""Spec: quantized embeddings — sentence-transformers' quantizer, the similarity a search over the
stored vectors computes, bytes per vector, and binary search with rescoring (eval/compact.py)."""

import numpy as np
import pytest
from sentence_transformers import quantize_embeddings

from l2v_cli.encoding.quantize import (Precision, bytes_per_vector, calibration_ranges, check_ranges, dequantize,
                                       parse_precision, parse_precisions, quantize, scoring_vectors)
from l2v_cli.errors import L2VError
from l2v_cli.eval.compact import CompactView, per_byte_rows
from l2v_cli.eval.metrics import cosine_search
from l2v_cli.eval.tasks import RetrievalTask

RNG = np.random.default_rng(0)
E = RNG.normal(size=(50, 20)).astype(np.float32)
R = calibration_ranges(E)


def test_the_quantizer_is_sentence_transformers():
    for p in ("int8", "uint8", "binary", "ubinary"):
        np.testing.assert_array_equal(quantize(E, p, R), quantize_embeddings(E, precision=p, ranges=R))
    assert quantize(E, "float16", None).dtype == np.float16
    assert quantize(E, "int8", R).dtype == np.int8 and quantize(E, "binary", None).shape == (50, 3)


def test_bytes_per_vector():
    assert [bytes_per_vector(576, p) for p in ("float32", "float16", "int8", "uint8", "binary", "ubinary")] == \
        [2304, 1152, 576, 576, 72, 72]
    assert bytes_per_vector(20, "binary") == 3 and bytes_per_vector(128, Precision("binary", "int8")) == 16


def test_binary_scores_are_hamming():
    bits = [scoring_vectors(quantize(E, p, None), p, 20) for p in ("binary", "ubinary")]
    np.testing.assert_array_equal(bits[0], bits[1])          # same bits, stored signed or unsigned
    a, b = (E[0] > 0), (E[1] > 0)
    hamming = int((a != b).sum())
    cos = bits[0][0] @ bits[0][1] / 20
    assert cos == pytest.approx(1 - 2 * hamming / 20)
    np.testing.assert_array_equal(bits[0][0] > 0, a)


def test_uint8_scores_as_its_int8_twin_and_dequantizes_within_half_a_step():
    i8, u8 = quantize(E, "int8", R), quantize(E, "uint8", R)
    np.testing.assert_array_equal(scoring_vectors(i8, "int8", 20), scoring_vectors(u8, "uint8", 20))
    back = dequantize(i8, "int8", R, 20)
    step = (R[1] - R[0]) / 255
    assert np.all(np.abs(back - E) <= step / 2 + 1e-5) and np.abs(back - E).max() > 0


@pytest.mark.parametrize("spec,msg", [("int4", "unknown precision 'int4'"), ("binary+int4", "rescoring"),
                                      ("float32+int8", "applies to a quantized search")])
def test_bad_precision_is_one_line(spec, msg):
    with pytest.raises(L2VError, match=msg):
        parse_precision(spec)
    assert parse_precisions("float32, binary+int8") == [Precision("float32"), Precision("binary", "int8")]


def test_ranges_of_the_wrong_width_are_refused():
    with pytest.raises(L2VError, match="calibration ranges are 20 wide but the embeddings are 16 wide"):
        check_ranges(R, 16, "--calibration r.npy")
    with pytest.raises(L2VError, match=r"must have shape \(2, D\)"):
        check_ranges(E, 20, "--calibration r.npy")


class Fixed:
    """A stand-in encoder: a fixed vector per text."""

    def __init__(self, table):
        self.table = table

    def encode(self, texts, instruction=None, **_):
        return np.stack([self.table[t] for t in texts]).astype(np.float32)


def test_rescoring_reorders_the_binary_candidates_with_the_float_query():
    # Both documents have the query's signs (Hamming ties); the float query prefers d2's int8 values.
    table = {"q": np.array([1.0, 0.1, 0.1, 0.1]), "d1": np.array([0.1, 1.0, 1.0, 1.0]),
             "d2": np.array([1.0, 0.2, 0.2, 0.2]), "d3": np.array([-1.0, -1.0, -1.0, -1.0])}
    base = Fixed(table)
    plain = CompactView(base, 4, Precision("binary")).search(["q"], None, ["d1", "d2", "d3"], 2)
    rescored = CompactView(base, 4, Precision("binary", "int8")).search(["q"], None, ["d1", "d2", "d3"], 2)
    assert plain.tolist() == [[0, 1]]      # control: Hamming alone ties d1 and d2 (corpus order)
    assert rescored.tolist() == [[1, 0]]   # the float query rescoring int8 documents puts d2 first
    full = CompactView(base, 4, Precision("float32")).search(["q"], None, ["d1", "d2", "d3"], 3)
    np.testing.assert_array_equal(full, cosine_search(table["q"][None], np.stack([table[d] for d in
                                                                                  ("d1", "d2", "d3")]), 3))


def test_int8_ranges_come_from_the_corpus_and_truncation_renormalises():
    table = {f"d{i}": RNG.normal(size=8) for i in range(30)} | {"q": RNG.normal(size=8) * 10}
    view = CompactView(Fixed(table), 4, Precision("int8"))
    view.search(["q"], None, [f"d{i}" for i in range(30)], 5)
    docs = np.stack([table[f"d{i}"][:4] / np.linalg.norm(table[f"d{i}"][:4]) for i in range(30)])
    np.testing.assert_allclose(view.ranges, calibration_ranges(docs), rtol=1e-6)


def test_per_byte_rows_on_a_retrieval_task(tmp_path):
    d = tmp_path / "ret"
    (d / "qrels").mkdir(parents=True)
    docs = {f"d{i}": RNG.normal(size=16) for i in range(40)}
    queries = {f"q{i}": docs[f"d{i}"] + 0.3 * RNG.normal(size=16) for i in range(10)}
    (d / "corpus.jsonl").write_text("".join(f'{{"_id": "{k}", "text": "{k}"}}\n' for k in docs))
    (d / "queries.jsonl").write_text("".join(f'{{"_id": "{k}", "text": "{k}"}}\n' for k in queries))
    (d / "qrels" / "test.tsv").write_text("".join(f"q{i}\td{i}\t1\n" for i in range(10)))
    task = RetrievalTask("toy", d).load()
    base = Fixed({**docs, **queries})
    full = task.run(base)
    rows = per_byte_rows(task, "no_prompt", base, full, [4, "full"], parse_precisions("float32,binary,binary+int8"),
                         16)
    assert [(r["dim"], r["precision"], r["bytes"]) for r in rows] == [
        (4, "float32", 16), (4, "binary", 1), (4, "binary+int8", 1),
        (16, "float32", 64), (16, "binary", 2), (16, "binary+int8", 2)]
    assert rows[3]["score"] == full["ndcg@10"] and rows[3]["share"] == 1.0
    assert rows[5]["score"] >= rows[4]["score"]  # rescoring helps binary here
    assert rows[0]["score"] < full["ndcg@10"]    # 4 of 16 random dims lose quality (not Matryoshka)
