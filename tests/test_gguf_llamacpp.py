"""GGUF exports run by the real llama.cpp (llama-cpp-python): same embeddings as `l2v encode`, the
same token ids, attention bidirectional inside llama.cpp, the instruction path, `l2v eval MODEL.gguf`.

Slow lane: `make test-gguf` installs llama-cpp-python (it compiles llama.cpp) and runs this file.
Without llama-cpp-python every test here is skipped with the install command.
Sentences: the first 50 of the shipped STS-B test set (sentence1).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from l2v_cli.gguf.check import compare_embeddings, cosine_rows, reference_embeddings
from l2v_cli.gguf.vocab import probe_texts
from l2v_cli.gguf.writer import write_gguf
from tests.gguf_helpers import ARCHS, bidir_folder

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                 reason="llama-cpp-python not installed: make install-llamacpp")]
REPO = Path(__file__).resolve().parents[1]
INSTRUCTION = "Retrieve semantically similar text: "  # ends in a space: merges with the text if not split
THREADS = 2


def sts_sentences(n: int = 50) -> list[str]:
    with open(REPO / "data" / "eval" / "stsb" / "test.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["sentence1"] for _, line in zip(range(n), f)]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gguf-llamacpp")


# --------------------------------------------------------------------------- tiny models, every architecture


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_arch_llamacpp_equals_l2v_encode(arch, root):
    from l2v_cli.gguf.llamacpp import check_tokenization
    from l2v_cli.modeling.loading import load_tokenizer

    folder = bidir_folder(arch, root)
    out = write_gguf(folder, root / f"{arch}-f32.gguf", gguf_type="f32").path
    n, bad = check_tokenization(out, load_tokenizer(folder), probe_texts())
    assert n == 70 and bad == []
    res = compare_embeddings(folder, out, sts_sentences(), n_threads=THREADS)
    assert res["served_ids"]["min_cos"] >= 0.9999, res  # llama.cpp's pooling, the sink sent as ids
    assert res["exact"]["min_cos"] >= 0.9999, res


def test_calibrated_export_scale_reaches_llama_cpp(root, tmp_path):
    """An export with --calibration (a per-dimension scale after pooling): the GGUF folds it into the
    final norm, so llama.cpp's own pooling gives the scaled vectors `l2v encode` gives."""
    from l2v_cli.encoding.dim_scale import read_dim_scale
    from l2v_cli.stages.export import export

    folder = bidir_folder("qwen2", root)
    st = export(folder, tmp_path / "st", calibration=str(REPO / "data" / "unsup" / "wiki_sentences.txt"),
                calibration_samples=64, verify=False)
    scale = read_dim_scale(st)
    out = write_gguf(st, tmp_path / "scaled-f32.gguf", gguf_type="f32").path
    texts = sts_sentences(20)
    res = compare_embeddings(st, out, texts, n_threads=THREADS)
    assert res["served_ids"]["min_cos"] >= 0.9999 and res["exact"]["min_cos"] >= 0.9999, res
    # control: the unscaled vectors are measurably different from what llama.cpp returned
    plain = reference_embeddings(folder, texts)
    assert cosine_rows(plain, plain * scale).mean() < res["served_ids"]["mean_cos"] - 1e-4


def _first_token_shift(path: Path, ids: list[int], attention: str | None = None) -> float:
    """How far token 0's state moves when the LAST token changes (pooling none)."""
    from l2v_cli.gguf.llamacpp import LlamaCppModel

    m = LlamaCppModel(path, pooling="none", n_threads=THREADS, attention=attention)
    try:
        a, b = m.token_states([ids, ids[:-1] + [ids[-1] + 1]])
    finally:
        m.close()
    return float(np.abs(a[0] - b[0]).max())


def test_attention_is_bidirectional_inside_llama_cpp(root):
    folder = bidir_folder("llama", root)
    out = root / "bidir-probe.gguf"
    write_gguf(folder, out, gguf_type="f32")
    ids = [1, 40, 41, 300, 7, 99, 500, 12]
    assert _first_token_shift(out, ids) > 1e-3  # the first token sees the last one
    # control: the same file forced causal at run time; token 0 no longer sees the future
    assert _first_token_shift(out, ids, attention="causal") < 1e-6


def test_causal_export_differs(root):
    """A causal export of the same weights (--allow-causal, file says causal) is a different encoder."""
    from l2v_cli.gguf.llamacpp import LlamaCppModel

    folder = bidir_folder("llama", root)
    causal_dir = root / "llama-causal-cfg"
    if not causal_dir.exists():
        import shutil

        shutil.copytree(folder, causal_dir)
        cfg = json.loads((causal_dir / "config.json").read_text())
        cfg["is_causal"] = True
        (causal_dir / "config.json").write_text(json.dumps(cfg))
    out = write_gguf(causal_dir, root / "causal.gguf", gguf_type="f32", allow_causal=True).path
    ids = [1, 40, 41, 300, 7, 99, 500, 12]
    assert _first_token_shift(out, ids) < 1e-6
    texts = sts_sentences(20)
    ref = reference_embeddings(folder, texts)
    m = LlamaCppModel(out, n_threads=THREADS)
    try:
        got = m.embed(texts)
    finally:
        m.close()
    assert cosine_rows(got, ref).mean() < 0.99


# --------------------------------------------------------------------------- SmolLM2-135M, every GGUF type

# Mean cosine to `l2v encode` fp32, the targets (docs/gguf.md has the measured table on the
# trained demo model). Before the attention sink, q8_0 reached only 0.9898 on this untrained model.
TARGETS = {"f32": 0.9999, "f16": 0.999, "bf16": 0.999, "q8_0": 0.99}


@pytest.fixture(scope="module")
def smollm(root) -> Path:
    from l2v_cli.stages.enable_bidir import enable_bidir

    out = root / "smollm2-bidir"
    enable_bidir("smollm2-135m", out, verify=False)
    return out


@pytest.fixture(scope="module")
def smollm_ref(smollm) -> np.ndarray:
    return reference_embeddings(smollm, sts_sentences())


@pytest.mark.parametrize("gguf_type", list(TARGETS))
def test_smollm2_llamacpp_equals_l2v_encode(gguf_type, smollm, smollm_ref, root):
    from l2v_cli.gguf.llamacpp import check_tokenization
    from l2v_cli.modeling.loading import load_tokenizer

    out = write_gguf(smollm, root / f"smollm2-{gguf_type}.gguf", gguf_type=gguf_type).path
    if gguf_type == "f32":
        n, bad = check_tokenization(out, load_tokenizer(smollm), probe_texts())
        assert n == 70 and bad == []
    res = compare_embeddings(smollm, out, sts_sentences(), n_threads=THREADS, reference=smollm_ref)
    assert res["served_ids"]["mean_cos"] >= TARGETS[gguf_type], res
    assert res["exact"]["mean_cos"] >= TARGETS[gguf_type], res


def test_instruction_served_vs_exact(smollm, root):
    """With an instruction, llama.cpp's own mean pooling differs (it averages the instruction too);
    pooling none + client-side pooling over the text (GGUFEncoder, the docs script) matches."""
    path = root / "smollm2-f32.gguf"
    if not path.exists():
        write_gguf(smollm, path, gguf_type="f32")
    texts = sts_sentences(20)
    res = compare_embeddings(smollm, path, texts, instruction=INSTRUCTION, n_threads=THREADS)
    assert res["exact"]["min_cos"] >= 0.9999, res
    assert res["served_ids"]["mean_cos"] < 0.99, res  # the difference is real: the instruction gets pooled
    # the runnable script in docs/ gives the same vectors as `l2v encode --instruction`
    ref = reference_embeddings(smollm, texts[:3], instruction=INSTRUCTION)
    proc = subprocess.run([sys.executable, str(REPO / "docs" / "gguf_instruction_pooling.py"), str(path),
                           INSTRUCTION, *texts[:3]], capture_output=True, text=True, check=True, timeout=300)
    got = np.array([json.loads(line) for line in proc.stdout.splitlines()], dtype=np.float32)
    assert cosine_rows(got, ref).min() >= 0.9999
    # an empty instruction: the bare text, every token pooled (BOS and the sink too), as `l2v encode`
    proc = subprocess.run([sys.executable, str(REPO / "docs" / "gguf_instruction_pooling.py"), str(path),
                           "", *texts[:3]], capture_output=True, text=True, check=True, timeout=300)
    got = np.array([json.loads(line) for line in proc.stdout.splitlines()], dtype=np.float32)
    assert cosine_rows(got, reference_embeddings(smollm, texts[:3])).min() >= 0.9999


def test_l2v_eval_runs_the_gguf_through_llama_cpp(smollm, root, tmp_path):
    path = root / "smollm2-f32.gguf"
    if not path.exists():
        write_gguf(smollm, path, gguf_type="f32")
    l2v = [sys.executable, "-m", "l2v_cli"]
    outs = {}
    for name, model in (("gguf", str(path)), ("hf", str(smollm))):
        out = tmp_path / f"{name}.json"
        subprocess.run([*l2v, "eval", model, "--tasks", "stsb", "--limit", "40", "--dtype", "float32",
                        "--no-cache", "-o", str(out)], check=True, capture_output=True, timeout=900)
        outs[name] = json.loads(out.read_text())
    assert outs["gguf"]["settings"]["dtype"] == "gguf-f32"
    # both protocols ran through llama.cpp: the bare text, and the STS instruction attended to, not pooled
    assert set(outs["gguf"]["tasks"]["stsb"]) == set(outs["hf"]["tasks"]["stsb"]) == {"no_prompt", "instruction"}
    assert outs["gguf"]["tasks"]["stsb"]["no_prompt"]["n"] == outs["gguf"]["tasks"]["stsb"]["instruction"]["n"] == 40
    # the score: under the instruction protocol (what `l2v eval` ran before it had two). Without the
    # instruction this untrained model scores about -4 and the f32 GGUF moves it by 0.6 (docs/gguf.md).
    a = outs["gguf"]["tasks"]["stsb"]["instruction"]["spearman"]
    b = outs["hf"]["tasks"]["stsb"]["instruction"]["spearman"]
    assert abs(a - b) < 0.5, (a, b)


def test_export_checks_tokenization_with_llama_cpp(smollm, tmp_path):
    from l2v_cli.stages.export.gguf_files import export_gguf

    rep = export_gguf(smollm, tmp_path / "enc", gguf_types=["q8_0"])
    assert rep.token_check == {"enc-q8_0.gguf": "70/70 identical"}
    assert "70/70 identical" in (tmp_path / "enc" / "README.md").read_text()


# --------------------------------------------------------------------------- llama.cpp's own tools, as the card says


def _tool(name: str) -> str:
    import os
    import shutil

    d = os.environ.get("L2V_LLAMACPP_BIN")
    path = str(Path(d) / name) if d else shutil.which(name)
    if not path or not Path(path).exists():
        pytest.skip(f"{name} not built: make install-llamacpp-tools")
    return path


def _card_command(card: str, tool: str) -> list[str]:
    import shlex

    line = next(ln for ln in card.splitlines() if ln.startswith(tool + " "))
    return shlex.split(line)


def test_serve_commands_from_the_card(smollm, smollm_ref, tmp_path):
    """Run the card's `llama-server` line and its curl request (token-id prompts: the attention
    sink's ids, then the text) as written, in the export folder."""
    import re
    import socket
    import time
    import urllib.request

    from l2v_cli.stages.export.gguf_files import export_gguf

    export_gguf(smollm, tmp_path / "enc", gguf_types=["f16"])
    folder = tmp_path / "enc"
    card = (folder / "README.md").read_text()
    texts = sts_sentences(4)
    body = json.loads(re.search(r"-d '(\{.*\})'", card).group(1))
    prefix = [x for x in body["input"][0] if isinstance(x, int)]
    assert prefix and all(row[:len(prefix)] == prefix for row in body["input"])

    server = _card_command(card, "llama-server")
    server[0] = _tool("llama-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server[server.index("--port") + 1] = str(port)
    p = subprocess.Popen(server + ["--host", "127.0.0.1", "-t", str(THREADS)], cwd=folder,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if urllib.request.urlopen(url + "/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)

        def post(inputs):
            req = urllib.request.Request(url + "/v1/embeddings", data=json.dumps({"input": inputs}).encode(),
                                         headers={"Content-Type": "application/json"})
            out = json.loads(urllib.request.urlopen(req, timeout=120).read())
            return np.array([d["embedding"] for d in sorted(out["data"], key=lambda d: d["index"])],
                            dtype=np.float32)

        assert cosine_rows(post([[*prefix, t] for t in texts]), smollm_ref[:4]).min() >= 0.999
        # control: plain strings lose the sink, and the vectors move
        assert cosine_rows(post(texts), smollm_ref[:4]).mean() < 0.999
    finally:
        p.terminate()
        p.wait(timeout=30)


def test_llama_embedding_from_the_card_without_sink(root, tmp_path):
    """An export without the sink (`bidir.sink: none`) serves plain strings: the card's
    `llama-embedding` line, run as written, gives `l2v encode`'s vector."""
    from l2v_cli.stages.enable_bidir import enable_bidir
    from l2v_cli.stages.export.gguf_files import export_gguf

    bidir_folder("llama", root)
    folder = root / "llama-nosink"
    if not folder.exists():
        enable_bidir(str(root / "llama-causal"), folder, verify=False, sink="none")
    export_gguf(folder, tmp_path / "enc", gguf_types=["f32"])
    card = (tmp_path / "enc" / "README.md").read_text()
    texts = sts_sentences(1)
    cmd = _card_command(card, "llama-embedding")
    cmd[0] = _tool("llama-embedding")
    cmd[cmd.index("-p") + 1] = texts[0]
    # llama.cpp's logger thread (common/log.cpp; the logger is leaked on purpose upstream, so lines
    # still queued at exit are lost) prints llama-embedding's JSON; here 3 of 16 runs printed nothing
    # with exit code 0. The card says to rerun then; so does this test, a bounded number of times.
    for _ in range(5):
        proc = subprocess.run(cmd + ["-t", str(THREADS)], cwd=tmp_path / "enc", capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        if "{" in proc.stdout:
            break
    else:
        pytest.fail("llama-embedding printed no JSON in 5 runs")
    data = json.loads(proc.stdout[proc.stdout.index("{"):])
    got = np.array([d["embedding"] for d in data["data"]], dtype=np.float32)
    assert cosine_rows(got, reference_embeddings(folder, texts)).min() >= 0.9999
