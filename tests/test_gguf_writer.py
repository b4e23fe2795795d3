"""GGUF export without llama.cpp: what the writer puts in the file (read back with gguf.GGUFReader),
the q/k layout (checked through transformers' own GGUF reader), the refusals and atomicity.

The real llama.cpp checks (same embeddings, bidirectional inside llama.cpp, tokenization) are in
tests/test_gguf_llamacpp.py (slow lane).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from l2v_cli.errors import L2VError
from l2v_cli.gguf import arch as arch_mod
from l2v_cli.gguf.writer import write_gguf
from tests.cli_helpers import run_in_process
from tests.gguf_helpers import bidir_folder


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gguf")


@pytest.fixture(scope="module")
def llama(root) -> Path:
    return bidir_folder("llama", root)


def _fields(path: Path) -> dict:
    from l2v_cli.gguf.llamacpp import read_metadata

    return read_metadata(path)


def _tensors(path: Path) -> dict:
    import gguf

    return {t.name: (t.tensor_type.name, tuple(int(x) for x in t.shape)) for t in gguf.GGUFReader(str(path)).tensors}


def test_metadata_records_non_causal_pooling_and_tokenizer(llama, root):
    out = write_gguf(llama, root / "meta.gguf", gguf_type="f32", pooling="last_token").path
    f = _fields(out)
    assert f["general.architecture"] == "llama"
    assert f["llama.attention.causal"] is False
    assert f["llama.pooling_type"] == 3  # LAST
    assert f["l2v.pooling"] == "last_token"
    cfg = json.loads((llama / "config.json").read_text())
    assert f["llama.block_count"] == cfg["num_hidden_layers"]
    assert f["llama.attention.head_count_kv"] == cfg["num_key_value_heads"]
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "gpt-2"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llama)
    assert f["tokenizer.ggml.add_bos_token"] is True  # the tiny tokenizer prepends <s>
    assert tok("hi")["input_ids"][0] == f["tokenizer.ggml.bos_token_id"] == tok.bos_token_id
    assert f["tokenizer.ggml.eos_token_id"] == tok.eos_token_id


def test_attention_sink_ids_recorded_after_bos(llama, root):
    """The converted tokenizer puts BOS, then the sink (EOS + " "), then the text; llama.cpp adds only
    BOS, so the file carries the sink's ids for the client (l2v.sink_token_ids)."""
    from transformers import AutoTokenizer

    from l2v_cli.gguf.llamacpp import sink_ids

    tok = AutoTokenizer.from_pretrained(llama)
    sink = json.loads((llama / "config.json").read_text())["l2v"]["sink"]["ids"]
    assert sink == [tok.eos_token_id, *tok(" ", add_special_tokens=False)["input_ids"]]
    f = _fields(write_gguf(llama, root / "sink.gguf", gguf_type="f32").path)
    assert f["l2v.sink_token_ids"] == ",".join(map(str, sink))  # a string: llama-cpp-python lists no arrays
    plain = tok("a b", add_special_tokens=False)["input_ids"]
    assert tok("a b")["input_ids"] == [f["tokenizer.ggml.bos_token_id"], *sink_ids(f), *plain]


@pytest.fixture(scope="module")
def nosink(root) -> Path:
    """The tiny qwen2 made bidirectional with `bidir.sink: none`."""
    from l2v_cli.stages.enable_bidir import enable_bidir

    src = bidir_folder("qwen2", root).parent / "qwen2-causal"
    out = root / "qwen2-nosink"
    if not out.exists():
        enable_bidir(str(src), out, verify=False, sink="none")
    return out


def test_no_sink_no_key(nosink, root):
    assert not (json.loads((nosink / "config.json").read_text())["l2v"].get("sink") or {}).get("ids")
    f = _fields(write_gguf(nosink, root / "nosink.gguf", gguf_type="f32").path)
    assert "l2v.sink_token_ids" not in f


@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_export_scale_folded_into_the_final_norm(arch, root, tmp_path):
    """An export with --calibration has a diagonal Dense after pooling; the GGUF multiplies the final
    norm's weight by it (after Gemma's +1), so llama.cpp's pooled vectors come out scaled."""
    import gguf
    from safetensors import safe_open

    from l2v_cli.encoding.dim_scale import read_dim_scale
    from l2v_cli.stages.export import export

    folder = bidir_folder(arch, root)
    st = export(folder, tmp_path / "st", calibration=str(Path(__file__).parents[1] / "data/unsup/wiki_sentences.txt"),
                calibration_samples=32, verify=False)
    scale = read_dim_scale(st)
    assert scale is not None and scale.std() > 0
    out = write_gguf(st, tmp_path / "scaled.gguf", gguf_type="f32").path
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        hf = f.get_tensor(next(k for k in f.keys() if k.endswith("model.norm.weight") or k == "norm.weight")).numpy()
    norms = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(str(out)).tensors if t.name.endswith("norm.weight")}
    plus = 1.0 if arch == "gemma" else 0.0
    assert np.allclose(norms["output_norm.weight"], (hf + plus) * scale, rtol=1e-6, atol=1e-7)
    assert _fields(out)["l2v.dim_scale"] == "folded into output_norm.weight"
    # control: the same folder without the Dense module gets the plain norm
    plain = write_gguf(folder, tmp_path / "plain.gguf", gguf_type="f32").path
    pn = next(np.asarray(t.data) for t in gguf.GGUFReader(str(plain)).tensors if t.name == "output_norm.weight")
    assert np.allclose(pn, hf + plus) and not np.allclose(pn, norms["output_norm.weight"])


def test_tensor_names_shapes_and_types(llama, root):
    import gguf

    f32 = _tensors(write_gguf(llama, root / "t32.gguf", gguf_type="f32").path)
    q8 = _tensors(write_gguf(llama, root / "tq8.gguf", gguf_type="q8_0").path)
    bf = _tensors(write_gguf(llama, root / "tbf.gguf", gguf_type="bf16").path)
    cfg = json.loads((llama / "config.json").read_text())
    hd = cfg["hidden_size"]
    assert set(f32) == set(q8) == set(bf)
    assert "output.weight" not in f32  # decoder only: llama.cpp ties the head to token_embd
    assert f32["token_embd.weight"] == ("F32", (hd, cfg["vocab_size"]))  # ggml order: (cols, rows)
    assert f32["blk.0.attn_k.weight"][1] == (hd, cfg["num_key_value_heads"] * hd // cfg["num_attention_heads"])
    assert len([n for n in f32 if n.startswith("blk.1.")]) == 9
    assert q8["blk.0.attn_q.weight"][0] == "Q8_0" and q8["token_embd.weight"][0] == "Q8_0"
    assert q8["blk.0.attn_norm.weight"][0] == "F32" and bf["output_norm.weight"][0] == "F32"
    assert bf["blk.0.ffn_down.weight"][0] == "BF16"
    sizes = {t: os.path.getsize(root / f"t{t}.gguf") for t in ("32", "q8", "bf")}
    assert sizes["q8"] < sizes["bf"] < sizes["32"]
    assert gguf.GGUFReader(str(root / "tq8.gguf")).fields["general.file_type"].contents() == \
        gguf.LlamaFileType.MOSTLY_Q8_0


def _hidden(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).last_hidden_state


def _via_transformers(folder: Path, gguf_path: Path):
    """transformers' GGUF reader (which undoes llama.cpp's q/k layout), forced bidirectional."""
    import warnings

    from transformers import AutoModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = AutoModel.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    m.config.is_causal = False
    return m.eval()


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_round_trip_through_transformers_gguf_reader(arch, root):
    from transformers import AutoModel

    folder = bidir_folder(arch, root)
    out = write_gguf(folder, root / f"rt-{arch}.gguf", gguf_type="f32").path
    ids = torch.tensor([[1, 40, 41, 300, 7, 99, 500, 12, 2]])
    ref = _hidden(AutoModel.from_pretrained(folder, dtype=torch.float32).eval(), ids)
    got = _hidden(_via_transformers(folder, out), ids)
    assert torch.allclose(ref, got, atol=1e-5)


def test_llama_without_the_qk_permutation_differs(llama, root, monkeypatch):
    """Control: the permutation is what makes the llama layout right (not a no-op)."""
    from transformers import AutoModel

    monkeypatch.setitem(arch_mod.SUPPORTED, "llama", dataclasses.replace(arch_mod.SUPPORTED["llama"],
                                                                          permute_qk=False))
    out = write_gguf(llama, root / "noperm.gguf", gguf_type="f32").path
    ids = torch.tensor([[1, 40, 41, 300, 7, 99, 500, 12, 2]])
    ref = _hidden(AutoModel.from_pretrained(llama, dtype=torch.float32).eval(), ids)
    got = _hidden(_via_transformers(llama, out), ids)
    assert (ref - got).abs().max() > 1e-2


def test_gemma_norms_are_stored_plus_one(root):
    from safetensors import safe_open

    import gguf

    folder = bidir_folder("gemma", root)
    out = write_gguf(folder, root / "gemma.gguf", gguf_type="f32").path
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        key = next(k for k in f.keys() if k.endswith("layers.0.input_layernorm.weight"))
        hf = f.get_tensor(key).numpy()
    t = next(t for t in gguf.GGUFReader(str(out)).tensors if t.name == "blk.0.attn_norm.weight")
    assert np.allclose(np.asarray(t.data), hf + 1.0)


# --------------------------------------------------------------------------- refusals (one line, no traceback)


def _cli(argv, capsys):
    code, err = run_in_process(argv, capsys)
    lines = [ln for ln in err.splitlines() if ln.startswith("l2v: error:")]
    return code, err, lines


def test_unsupported_architecture_named_with_the_list(root, capsys, tmp_path):
    folder = bidir_folder("stablelm", root)
    code, err, lines = _cli(["export", str(folder), "-o", str(tmp_path / "o"), "--format", "gguf"], capsys)
    assert code != 0 and len(lines) == 1 and "Traceback" not in err
    assert "'stablelm'" in lines[0] and "gemma, gemma2, gemma3_text, llama, mistral, phi3, qwen2, qwen3" in lines[0]
    assert not (tmp_path / "o").exists()


def test_causal_source_refused_unless_allowed(root, capsys, tmp_path):
    from l2v_cli.modeling.tiny import save_tiny_model

    causal = save_tiny_model("llama", tmp_path / "causal")
    code, err, lines = _cli(["export", str(causal), "-o", str(tmp_path / "o"), "--format", "gguf"], capsys)
    assert code != 0 and len(lines) == 1 and "causal model" in lines[0] and "--allow-causal" in lines[0]
    assert not (tmp_path / "o").exists()
    code, err, _ = _cli(["export", str(causal), "-o", str(tmp_path / "c.gguf"), "--format", "gguf",
                         "--gguf-type", "f32", "--allow-causal"], capsys)
    assert code == 0, err
    assert _fields(tmp_path / "c.gguf")["llama.attention.causal"] is True


def test_query_pre_attn_scalar_mismatch_refused(root, tmp_path):
    folder = bidir_folder("gemma2", tmp_path, query_pre_attn_scalar=256)
    with pytest.raises(L2VError, match="query_pre_attn_scalar=256 differs from head_dim=16"):
        write_gguf(folder, tmp_path / "g.gguf")


@pytest.mark.parametrize("where", ["top", "rope_parameters"])
def test_phi3_partial_rotary_refused_wherever_the_config_keeps_it(where):
    """Phi-4-mini style partial RoPE (0.75): transformers 5 keeps it in rope_parameters, older
    configs at the top level; llama.cpp's phi3 graph rotates every dimension."""
    cfg = {"hidden_size": 64, "num_attention_heads": 4, "rope_parameters": {"rope_type": "default"}}
    if where == "top":
        cfg["partial_rotary_factor"] = 0.75
    else:
        cfg["rope_parameters"]["partial_rotary_factor"] = 0.75
    with pytest.raises(L2VError, match="partial_rotary_factor"):
        arch_mod.check_config(arch_mod.SUPPORTED["phi3"], cfg)
    arch_mod.check_config(arch_mod.SUPPORTED["phi3"], {**cfg, "partial_rotary_factor": 1.0,
                                                       "rope_parameters": {"rope_type": "default"}})  # control


def test_sentencepiece_style_tokenizer_refused(llama, tmp_path):
    import shutil

    folder = tmp_path / "spm"
    shutil.copytree(llama, folder)
    tj = json.loads((folder / "tokenizer.json").read_text())
    tj["model"]["byte_fallback"] = True
    (folder / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(L2VError, match="SentencePiece-style tokenizers"):
        write_gguf(folder, tmp_path / "s.gguf")
    assert not (tmp_path / "s.gguf").exists()


@pytest.mark.parametrize("argv_tail, needle", [
    (["--format", "gguf", "--pooling", "weighted_mean"], "pooling 'weighted_mean' has no llama.cpp counterpart"),
    (["--format", "gguf", "--gguf-type", "q4_k"], "unknown GGUF type 'q4_k'"),
    (["--format", "onnx"], "unknown export format 'onnx'"),
])
def test_bad_options_one_line(llama, tmp_path, capsys, argv_tail, needle):
    code, err, lines = _cli(["export", str(llama), "-o", str(tmp_path / "o"), *argv_tail], capsys)
    assert code != 0 and len(lines) == 1 and needle in lines[0] and "Traceback" not in err


def test_out_exists_as_other_exports(llama, tmp_path, capsys):
    (tmp_path / "o").mkdir()
    code, _, lines = _cli(["export", str(llama), "-o", str(tmp_path / "o"), "--format", "gguf"], capsys)
    assert code != 0 and "already exists" in lines[0] and "--overwrite" in lines[0]
    code, err, _ = _cli(["export", str(llama), "-o", str(tmp_path / "o"), "--format", "gguf", "--overwrite"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["README.md", "o-f16.gguf"]


def test_failure_leaves_nothing(llama, tmp_path, monkeypatch):
    from l2v_cli.gguf import writer

    calls = {"n": 0}
    real = writer._encode

    def boom(arr, qtype):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("disk on fire")
        return real(arr, qtype)

    monkeypatch.setattr(writer, "_encode", boom)
    with pytest.raises(RuntimeError):
        write_gguf(llama, tmp_path / "x.gguf")
    from l2v_cli.stages.export.gguf_files import export_gguf

    calls["n"] = 0
    with pytest.raises(RuntimeError):
        export_gguf(llama, tmp_path / "folder", gguf_types=["f32"])
    assert list(tmp_path.iterdir()) == []


def test_st_and_gguf_in_one_folder(llama, tmp_path):
    from l2v_cli.stages.export.gguf_files import export_gguf

    rep = export_gguf(llama, tmp_path / "both", formats=["st", "gguf"], gguf_types=["q8_0"], verify=False)
    names = {p.name for p in (tmp_path / "both").iterdir()}
    assert {"config.json", "modules.json", "model.safetensors", "both-q8_0.gguf", "README.md"} <= names
    card = (tmp_path / "both" / "README.md").read_text()
    assert "SentenceTransformer(" in card and "llama-server -m both-q8_0.gguf --embeddings --pooling mean" in card
    assert rep.files[0].path == tmp_path / "both" / "both-q8_0.gguf"
    assert _fields(rep.files[0].path)["llama.attention.causal"] is False


def test_gguf_card_says_how_to_serve(llama, tmp_path):
    from l2v_cli.stages.export.gguf_files import export_gguf

    export_gguf(llama, tmp_path / "enc", gguf_types=["f16", "q8_0"], pooling="bos")
    card = (tmp_path / "enc" / "README.md").read_text()
    assert "llama-server -m enc-f16.gguf --embeddings --pooling cls --port 8080" in card
    assert "--pooling none" in card and "docs/gguf.md" in card
    assert "| `enc-q8_0.gguf` | q8_0 |" in card
    # the attention sink: inputs go as token-id prompts (BOS <s>=1, then EOS </s>=2 and "Ġ"=224, then text)
    assert '-d \'{"input": [[1, 2, 224, "a sentence"], [1, 2, 224, "another one"]]}\'' in card
    assert "llama-embedding -m" not in card  # plain text only: it cannot send the sink


def test_gguf_card_request_ends_with_eos_when_the_file_adds_it(llama, tmp_path):
    """eos pooling: llama.cpp appends EOS to a text prompt, not to one that starts with an id, so the
    card's token-id request carries it (</s> = 2 in the tiny tokenizer)."""
    from l2v_cli.stages.export.gguf_files import export_gguf

    export_gguf(llama, tmp_path / "enc", gguf_types=["f16"], pooling="eos")
    card = (tmp_path / "enc" / "README.md").read_text()
    assert '-d \'{"input": [[1, 2, 224, "a sentence", 2], [1, 2, 224, "another one", 2]]}\'' in card
    assert "llama-server -m enc-f16.gguf --embeddings --pooling last --port 8080" in card


def test_gguf_card_without_sink_serves_plain_strings(nosink, tmp_path):
    from l2v_cli.stages.export.gguf_files import export_gguf

    export_gguf(nosink, tmp_path / "enc", gguf_types=["f16"])
    card = (tmp_path / "enc" / "README.md").read_text()
    assert '-d \'{"input": ["a sentence", "another one"]}\'' in card
    assert "llama-embedding -m enc-f16.gguf --pooling mean -p 'a sentence' --embd-output-format json" in card
    assert "attention sink" not in card and "token-id prompt" not in card


def test_eval_of_our_gguf_without_llama_cpp_is_one_line(llama, tmp_path, capsys, monkeypatch):
    import sys

    write_gguf(llama, tmp_path / "m.gguf", gguf_type="f32")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp -> ImportError
    code, err, lines = _cli(["eval", str(tmp_path / "m.gguf"), "--tasks", "stsb", "--limit", "5"], capsys)
    assert code != 0 and len(lines) == 1 and "Traceback" not in err
    assert "llama-cpp-python is not installed" in lines[0] and "make install-llamacpp" in lines[0]


# --------------------------------------------------------------------------- recipe key export.formats


def test_recipe_formats_st_and_gguf(llama, tmp_path):
    from l2v_cli.config import load_recipe
    from l2v_cli.stages.export import export_from_recipe

    recipe = load_recipe("smoke", ["export.formats=[st,gguf]", "export.gguf_types=[f16,q8_0]",
                                   "export.dtype=float32"])
    out = export_from_recipe(recipe, llama, tmp_path / "final")
    names = {p.name for p in out.iterdir()}
    assert {"final-f16.gguf", "final-q8_0.gguf", "modules.json", "config.json"} <= names
    assert load_recipe("smoke").export.formats == ["st"]  # default: as before
    # the temporary models of `mine` and ablation eval points: the sentence-transformers folder only
    tmp = export_from_recipe(recipe, llama, tmp_path / "tmp-model", st_only=True)
    assert (tmp / "modules.json").exists() and not list(tmp.glob("*.gguf"))


def test_recipe_formats_rejects_unknown_and_gguf_alone(llama, tmp_path):
    from l2v_cli.config import load_recipe
    from l2v_cli.stages.export import export_from_recipe

    with pytest.raises(L2VError, match="export.formats"):
        load_recipe("smoke", ["export.formats=[st,onnx]"])
    with pytest.raises(L2VError, match="must include st"):
        export_from_recipe(load_recipe("smoke", ["export.formats=[gguf]"]), llama, tmp_path / "final")


def test_stage_folder_is_merged_then_converted(tmp_path, capsys):
    """SOURCE = a training-stage folder (base + LoRA adapter): the GGUF holds the MERGED weights,
    the same as the sentence-transformers export of that stage."""
    from transformers import AutoModel

    from l2v_cli.config.schema import LoraConfig
    from l2v_cli.modeling.loading import load_model
    from l2v_cli.stages.common import finish_stage, read_chain
    from l2v_cli.stages.enable_bidir import enable_bidir
    from l2v_cli.stages.export import export
    from l2v_cli.training.lora import add_lora

    enable_bidir("tiny-llama", tmp_path / "bidir", verify=False)
    loaded = load_model(str(tmp_path / "bidir"), dtype="float32", bidirectional=True, verify=False, lm_head=True,
                        device="cpu")
    model = add_lora(loaded.model, LoraConfig(r=4, alpha=8, dropout=0.0))
    gen = torch.Generator().manual_seed(7)
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data = torch.randn(p.shape, generator=gen) * 0.1

    class Saver:
        def save_model(self, path):
            model.save_pretrained(path)

    (tmp_path / "simcse").mkdir()
    finish_stage(tmp_path / "simcse", Saver(), loaded.tokenizer, "train-simcse", read_chain(tmp_path / "bidir"),
                 {"steps": 3})
    code, err, _ = _cli(["export", str(tmp_path / "simcse"), "-o", str(tmp_path / "enc"), "--format", "gguf",
                         "--gguf-type", "f32"], capsys)
    assert code == 0, err
    st = export(tmp_path / "simcse", tmp_path / "st", verify=False)
    ids = torch.tensor([[1, 40, 41, 300, 7, 99, 500, 12, 2]])
    ref = _hidden(AutoModel.from_pretrained(st, dtype=torch.float32).eval(), ids)
    base = _hidden(AutoModel.from_pretrained(tmp_path / "bidir", dtype=torch.float32).eval(), ids)
    got = _hidden(_via_transformers(st, tmp_path / "enc" / "enc-f32.gguf"), ids)
    assert torch.allclose(ref, got, atol=1e-4)
    assert (base - got).abs().max() > 1e-2  # the adapter was merged in
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == ["README.md", "enc-f32.gguf"]
