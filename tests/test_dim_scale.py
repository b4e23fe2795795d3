"""Spec: the export's calibrated per-dimension scale (encoding/dim_scale.py). With --calibration the
export holds a diagonal Dense module (1/std of each dimension over the calibration texts, encoded
bare) between Pooling and Normalize; plain sentence-transformers, our Encoder and the card's
transformers snippet then give the same vectors. Without it (the control) nothing changes."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from l2v_cli.encoding.dim_scale import fit_dim_scale, read_dim_scale
from l2v_cli.encoding.encoder import Encoder
from l2v_cli.errors import L2VError
from l2v_cli.stages.enable_bidir import enable_bidir
from l2v_cli.stages.export import export

CAL = [f"calibration sentence number {i} about {w}" for i, w in
       enumerate(["rivers", "trains", "music", "bread", "stars", "law", "chess", "rain", "glass", "maps"] * 3)]
TEXTS = ["A man is playing a guitar.", "The cat sleeps on the warm windowsill.", "Stocks fell sharply today."]


def cos(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("dimscale")
    bidir = enable_bidir("tiny-llama", root / "bidir").out
    (root / "cal.txt").write_text("\n".join(CAL) + "\n")
    return {"plain": export(bidir, root / "plain", normalize=True),
            "scaled": export(bidir, root / "scaled", normalize=True, calibration=str(root / "cal.txt"),
                             calibration_samples=1000)}


def test_fit_dim_scale_is_one_over_each_dimensions_std_and_a_constant_dimension_stays_finite():
    emb = np.array([[1.0, 10.0, 5.0], [3.0, 30.0, 5.0], [5.0, 50.0, 5.0]])
    sd = emb.std(axis=0)
    scale = fit_dim_scale(emb)
    assert np.allclose(scale[:2], 1 / sd[:2])
    assert scale[2] == pytest.approx(1 / np.median(sd))  # no variation: the median spread, not 1/0
    with pytest.raises(L2VError, match="at least 2 embeddings"):
        fit_dim_scale(emb[:1])


def test_the_scaled_export_holds_a_diagonal_dense_between_pooling_and_normalize(exports):
    mods = json.loads((exports["scaled"] / "modules.json").read_text())
    assert [m["path"] for m in mods] == ["", "1_Pooling", "2_Dense", "3_Normalize"]
    assert [m["path"] for m in json.loads((exports["plain"] / "modules.json").read_text())] == \
        ["", "1_Pooling", "2_Normalize"]
    rec = json.loads((exports["scaled"] / "config.json").read_text())["l2v"]["dim_scale"]
    assert rec["texts"] == len(CAL) and rec["data"].endswith("cal.txt")
    card = (exports["scaled"] / "README.md").read_text()
    assert f"1/std over {len(CAL)} texts of `cal.txt` (a local file)" in card and rec["data"] not in card
    assert json.loads((exports["plain"] / "config.json").read_text())["l2v"]["dim_scale"] is None
    assert read_dim_scale(exports["plain"]) is None


def test_the_scale_is_one_over_the_std_of_the_bare_calibration_embeddings(exports):
    raw = Encoder.from_pretrained(exports["plain"], dtype="float32").encode(CAL)  # unscaled, unnormalised
    assert np.allclose(read_dim_scale(exports["scaled"]), 1 / raw.std(axis=0), rtol=1e-3)


def test_sentence_transformers_our_encoder_and_the_card_snippet_agree_and_differ_from_the_control(exports, monkeypatch):
    st = SentenceTransformer(str(exports["scaled"]), device="cpu").encode(TEXTS)
    ours = Encoder.from_pretrained(exports["scaled"], dtype="float32").encode(TEXTS, normalize=True)
    assert cos(st, ours).min() > 0.9999
    card = (exports["scaled"] / "README.md").read_text()
    code = re.search(r"### transformers\n\n```python\n(.*?)```", card, re.S).group(1)
    monkeypatch.chdir(exports["scaled"].parent)
    ns: dict = {}
    exec(code.replace('["a sentence", "another one"]', repr(TEXTS)), ns)
    assert cos(ns["emb"].numpy(), st).min() > 0.9999
    control = SentenceTransformer(str(exports["plain"]), device="cpu").encode(TEXTS)
    assert cos(control, st).min() < 0.999  # the control: the scale changes the vectors


def test_a_cached_eval_embedding_of_the_unscaled_model_is_not_reused_for_the_scaled_one(exports):
    from l2v_cli.eval.cache import encoder_settings

    plain = Encoder.from_pretrained(exports["plain"], dtype="float32")
    scaled = Encoder.from_pretrained(exports["scaled"], dtype="float32")
    assert "dim_scale" not in encoder_settings(plain) and "dim_scale" in encoder_settings(scaled)
