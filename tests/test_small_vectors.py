"""Spec: small vectors end to end on a tiny model — a SimCSE stage trained with Matryoshka records
its dims, the export carries them (config, card), and truncation and quantization work in
`Encoder.encode(dim=)`, `l2v encode --dim/--precision/--calibration`, sentence-transformers'
`truncate_dim` and `l2v eval --dims/--precision` (the quality-per-byte table)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from l2v_cli.cli.main import app
from l2v_cli.config import load_recipe
from l2v_cli.encoding.encoder import Encoder
from l2v_cli.encoding.quantize import calibration_ranges, quantize
from l2v_cli.errors import L2VError
from l2v_cli.stages.enable_bidir import enable_bidir
from l2v_cli.stages.export import export
from l2v_cli.stages.simcse import train_simcse

TEXTS = ["hello world", "a", "The quick brown fox jumps over the lazy dog.", "What is 2 + 2?", "Ünïcödé 🙂",
         "another sentence here"]
DIMS = ["simcse.matryoshka.dims=[16, 32, full]"]  # the tiny model is 64 wide


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("small")
    r = load_recipe("smoke", ["simcse.train.max_steps=2", "simcse.data.max_samples=32", *DIMS])
    stage = train_simcse(r, "tiny-llama", root / "simcse")
    enc = export(stage, root / "enc", normalize=True)
    enable_bidir("tiny-llama", root / "bidir", verify=False)
    plain = export(root / "bidir", root / "plain", normalize=True)
    return {"root": root, "stage": stage, "enc": enc, "plain": plain}


def norm(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_stage_export_and_card_record_the_trained_dims(built):
    rec = json.loads((built["stage"] / "stage.json").read_text())
    assert rec["matryoshka"] == {"dims": [16, 32, 64], "weights": [1.0, 1.0, 1.0]}
    cfg = json.loads((built["enc"] / "config.json").read_text())
    assert cfg["l2v"]["matryoshka_dims"] == [16, 32, 64]
    card = (built["enc"] / "README.md").read_text()
    assert "| Matryoshka dims | 16, 32, 64 |" in card and "truncate_dim=16" in card
    # control: an export without Matryoshka training says so
    assert json.loads((built["plain"] / "config.json").read_text())["l2v"]["matryoshka_dims"] is None
    assert "| Matryoshka dims | none (trained at full width only) |" in (built["plain"] / "README.md").read_text()


def test_encoder_truncates_then_normalises(built, capsys):
    enc = Encoder.from_pretrained(built["enc"], dtype="float32")
    assert enc.trained_dims == [16, 32, 64]
    full = enc.encode(TEXTS)
    small = enc.encode(TEXTS, dim=16, normalize=True)
    assert small.shape == (len(TEXTS), 16)
    np.testing.assert_allclose(small, norm(full[:, :16]), rtol=1e-5, atol=1e-6)
    assert np.abs(small - norm(full)[:, :16]).max() > 1e-3  # control: not a slice of the normalised vector
    assert "warning" not in capsys.readouterr().err          # 16 is a trained width
    enc.encode(TEXTS[:1], dim=20)
    enc.encode(TEXTS[:1], dim=20)
    err = capsys.readouterr().err
    assert err.count("l2v: warning: dim 20 is not a width this model was trained with "
                     "(Matryoshka dims 16, 32, 64)") == 1
    with pytest.raises(L2VError, match="dim 65 is larger than the model's hidden size 64"):
        enc.encode(TEXTS, dim=65)


ST_SCRIPT = textwrap.dedent(r'''
    import json, sys
    import torch
    torch.set_num_threads(1)
    from sentence_transformers import SentenceTransformer
    m = SentenceTransformer(sys.argv[1], truncate_dim=16, model_kwargs={"dtype": torch.float32})
    print(json.dumps(m.encode(json.loads(sys.argv[2])).tolist()))
''')


@pytest.mark.slow  # a fresh Python process importing sentence-transformers (export equality: test_export.py)
def test_sentence_transformers_truncate_dim_gives_our_prefix(built):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([sys.executable, "-c", ST_SCRIPT, str(built["enc"]), json.dumps(TEXTS)], capture_output=True,
                       text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    st = np.array(json.loads(p.stdout.strip().splitlines()[-1]))
    ours = Encoder.from_pretrained(built["enc"], dtype="float32").encode(TEXTS, dim=16, normalize=True)
    assert st.shape == ours.shape and (norm(st) * ours).sum(1).min() >= 0.9999


def cli(*argv):
    res = CliRunner().invoke(app, [str(a) for a in argv])
    return res.exit_code, res.output


def test_encode_cli_dim_precision_and_calibration(built, tmp_path):
    (tmp_path / "docs.txt").write_text("\n".join(TEXTS) + "\n")
    (tmp_path / "q.txt").write_text("what is a fox?\nhello\n")
    base = ["encode", built["enc"], "--normalize", "--dtype", "float32", "--no-progress", "--dim", "16"]
    code, out = cli(*base, "-i", tmp_path / "docs.txt", "-o", tmp_path / "docs.npy", "--precision", "int8")
    assert code == 0, out
    stored, ranges = np.load(tmp_path / "docs.npy"), np.load(tmp_path / "docs.ranges.npy")
    floats = Encoder.from_pretrained(built["enc"], dtype="float32").encode(TEXTS, dim=16, normalize=True)
    np.testing.assert_allclose(ranges, calibration_ranges(floats), atol=1e-6)
    assert stored.dtype == np.int8 and stored.shape == (len(TEXTS), 16)
    assert np.abs(stored.astype(int) - quantize(floats, "int8", ranges).astype(int)).max() <= 1
    # queries take the corpus's ranges (the same buckets), and write them back beside their output
    code, out = cli(*base, "-i", tmp_path / "q.txt", "-o", tmp_path / "q.npy", "--precision", "int8",
                    "--calibration", tmp_path / "docs.ranges.npy")
    assert code == 0, out
    np.testing.assert_array_equal(np.load(tmp_path / "q.ranges.npy"), ranges)
    code, out = cli(*base, "-i", tmp_path / "docs.txt", "-o", tmp_path / "bits.npy", "--precision", "ubinary")
    assert code == 0, out
    bits = np.load(tmp_path / "bits.npy")
    assert bits.dtype == np.uint8 and bits.shape == (len(TEXTS), 2)
    np.testing.assert_array_equal(np.unpackbits(bits, axis=1), (floats > 0).astype(np.uint8))
    assert not (tmp_path / "bits.ranges.npy").exists()


def test_eval_prints_the_quality_per_byte_table(built, tmp_path):
    out_json = tmp_path / "r.json"
    code, out = cli("eval", built["enc"], "--tasks", "stsb", "--limit", "24", "--dtype", "float32", "--no-cache",
                    "--protocol", "no-prompt", "--dims", "16,full", "--precision", "float32,int8,binary", "-o", out_json)
    assert code == 0, out
    res = json.loads(out_json.read_text())
    rows = res["per_byte"]
    assert [(r["dim"], r["precision"], r["bytes"]) for r in rows] == [
        (16, "float32", 64), (16, "int8", 16), (16, "binary", 2), (64, "float32", 256), (64, "int8", 64),
        (64, "binary", 8)]
    full = res["tasks"]["stsb"]["no_prompt"]["spearman"]
    assert rows[3]["score"] == full and rows[3]["share"] == 1.0
    assert rows[0]["score"] != full and rows[0]["share"] == pytest.approx(rows[0]["score"] / full)
    assert "quality per byte" in out and "[trained dims 16, 32, 64]" not in out  # one model: no model column
    assert res["trained_dims"] == [16, 32, 64]
