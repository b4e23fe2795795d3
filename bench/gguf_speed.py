"""GGUF export in llama.cpp vs `l2v encode`: agreement per GGUF type, file sizes, encode speed,
STS-B Spearman — one run, one JSON.

    python -m bench.run gguf                      # SmolLM2-135M made bidirectional (enable-bidir)
    python -m bench.run gguf --model runs/cpu-demo/final --threads 2 --n 256

  * cosine llama.cpp vs the Encoder (fp32, as `l2v encode`) over the first 50 STS-B sentences,
    per type (f32, f16, bf16, q8_0): "served_text" = llama.cpp's own tokenization + pooling of a
    plain string (no attention sink), "served_ids" = llama.cpp's pooling over the ids `l2v encode`
    uses (the sink sent as ids: what llama-server returns for a token-id prompt), "exact" =
    per-token states pooled by us (`l2v eval MODEL.gguf`); with the STS instruction too (served
    pools the instruction: expected lower);
  * tokenization: llama.cpp vs transformers on the probe strings + 50 STS-B sentences;
  * speed: the same N sentences, `l2v encode` fp32 (torch threads = T) vs the q8_0 GGUF in
    llama.cpp (n_threads = T; tokenized by llama.cpp, the sink's ids put before, pooled by
    llama.cpp: the served-ids path), alternated, best of --repeats each, ratio = llama.cpp / l2v;
  * STS-B test Spearman (×100, both protocols of `l2v eval`: no prompt, instruction) of the
    fp32 folder and of the q8_0 GGUF (through llama.cpp).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TYPES = ("f32", "f16", "bf16", "q8_0")
INSTRUCTION = "Retrieve semantically similar text: "


def log(msg: str) -> None:
    print(f"bench[gguf]: {msg}", file=sys.stderr, flush=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run gguf", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="bidirectional model folder (default: smollm2-135m via enable-bidir)")
    p.add_argument("--n", type=int, default=256, help="sentences for the speed run")
    p.add_argument("--threads", type=int, default=2, help="torch threads and llama.cpp n_threads")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-spearman", action="store_true", help="skip the STS-B evaluation")
    p.add_argument("--cache", default=os.environ.get("L2V_BENCH_CACHE", str(Path.home() / ".cache" / "l2v-bench")))
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    return parser().parse_known_args(argv)[0]  # the other benchmarks' options are ignored


def sentences(n: int) -> list[str]:
    out = []
    with open(REPO / "data" / "eval" / "stsb" / "test.jsonl", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            out += [d["sentence1"], d["sentence2"]]
            if len(out) >= n:
                break
    return out[:n]


def model_folder(args) -> Path:
    if args.model:
        return Path(args.model)
    folder = Path(args.cache) / "smollm2-135m-bidir"
    if not (folder / "config.json").exists():
        from l2v_cli.stages.enable_bidir import enable_bidir

        log("making SmolLM2-135M bidirectional (enable-bidir) ...")
        enable_bidir("smollm2-135m", folder, verify=False)
    return folder


def run(argv: list[str]) -> dict:
    import torch

    from l2v_cli.encoding.encoder import Encoder
    from l2v_cli.gguf.check import compare_embeddings, reference_embeddings
    from l2v_cli.gguf.vocab import probe_texts
    from l2v_cli.gguf.llamacpp import LlamaCppModel, check_tokenization, require_llama_cpp
    from l2v_cli.gguf.writer import write_gguf
    from l2v_cli.modeling.loading import load_tokenizer

    from l2v_cli.errors import L2VError

    args = parse(argv)
    try:
        llama_cpp = require_llama_cpp()
    except L2VError as e:  # `make bench` without llama-cpp-python: say so, do not fail the others
        return {"skipped": e.line()}
    folder = model_folder(args)
    out_dir = Path(args.cache) / "gguf" / folder.name
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    res: dict = {"model": str(folder), "threads": args.threads, "llama_cpp_python": llama_cpp.__version__,
                 "sizes_mb": {"safetensors_fp32": round(sum(p.stat().st_size for p in folder.glob("*.safetensors"))
                                                       / 2**20, 1)}}
    files = {}
    for t in TYPES:
        t0 = time.perf_counter()
        files[t] = write_gguf(folder, out_dir / f"{folder.name}-{t}.gguf", gguf_type=t, overwrite=True).path
        res["sizes_mb"][t] = round(files[t].stat().st_size / 2**20, 1)
        log(f"wrote {files[t].name} in {time.perf_counter() - t0:.1f}s")
    n, bad = check_tokenization(files["f32"], load_tokenizer(folder), probe_texts())
    res["tokenization"] = {"compared": n, "different": bad}
    texts = sentences(100)[::2][:50]  # the first 50 sentence1
    ref = reference_embeddings(folder, texts)
    ref_i = reference_embeddings(folder, texts, instruction=INSTRUCTION)
    res["cosine_vs_l2v_encode"] = {}
    for t in TYPES:
        plain = compare_embeddings(folder, files[t], texts, n_threads=args.threads, reference=ref)
        instr = compare_embeddings(folder, files[t], texts, n_threads=args.threads, reference=ref_i,
                                   instruction=INSTRUCTION)
        res["cosine_vs_l2v_encode"][t] = {"no_instruction": plain, "instruction": instr}
        log(f"{t}: {json.dumps(res['cosine_vs_l2v_encode'][t])}")

    # speed: same sentences, alternating
    speed_texts = sentences(args.n)
    enc = Encoder.from_pretrained(str(folder), pooling="mean", dtype="float32")
    lm = LlamaCppModel(files["q8_0"], pooling="mean", n_threads=args.threads)
    enc.encode(speed_texts[:8])

    def served(texts):  # what a llama-server client with token-id prompts gets, tokenization included
        return lm.pooled([lm.l2v_tokenize(t) for t in texts])

    served(speed_texts[:8])
    best = {"l2v_fp32": float("inf"), "llamacpp_q8_0": float("inf")}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        enc.encode(speed_texts, batch_size=32)
        best["l2v_fp32"] = min(best["l2v_fp32"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        served(speed_texts)
        best["llamacpp_q8_0"] = min(best["llamacpp_q8_0"], time.perf_counter() - t0)
    lm.close()
    del enc
    rate = {k: round(len(speed_texts) / v, 1) for k, v in best.items()}
    res["speed"] = {"sentences": len(speed_texts), "sentences_per_s": rate,
                    "ratio_llamacpp_q8_0_over_l2v_fp32": round(rate["llamacpp_q8_0"] / rate["l2v_fp32"], 2),
                    "load_avg_1min": round(os.getloadavg()[0], 2)}
    log(f"speed: {json.dumps(res['speed'])}")

    if not args.no_spearman:
        from l2v_cli.eval.runner import evaluate

        res["stsb_spearman"] = {}
        for label, spec in (("fp32_folder", str(folder)), ("q8_0_gguf", str(files["q8_0"]))):
            t0 = time.perf_counter()
            r = evaluate(spec, "stsb", dtype="float32", cache=False, batch_size=32)
            res["stsb_spearman"][label] = {p: round(v["spearman"], 2) for p, v in r["tasks"]["stsb"].items()}
            log(f"stsb {label}: {res['stsb_spearman'][label]} ({time.perf_counter() - t0:.0f}s)")
        res["stsb_spearman"]["delta"] = {p: round(v - res["stsb_spearman"]["fp32_folder"][p], 2)
                                         for p, v in res["stsb_spearman"]["q8_0_gguf"].items()}
    return res
