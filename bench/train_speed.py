"""Training step speed: l2v's MNTP and SimCSE steps vs a reference step written the llm2vec way.

    python -m bench.run train [--model smollm2-135m] [--steps 3] [--threads 1]

Reference (llm2vec scripts): fp32, the causal-LM loss over the FULL vocabulary at every position
(MNTP), each SimCSE batch padded to its longest text with the LM head computed, no length care.
Ours: the LM head only at masked positions (MNTP), `logits_to_keep=1` (SimCSE), bf16 autocast
where the CPU has native bf16 (reported either way: on a CPU without it bf16 is far slower).
Same model, LoRA, batch and data in one run; the ratio is what matters on a shared machine.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time


def log(msg: str) -> None:
    print(f"[bench train] {msg}", file=sys.stderr, flush=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run train")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant (after one warm-up)")
    p.add_argument("--mntp-batch", type=int, default=4)
    p.add_argument("--mntp-len", type=int, default=128)
    p.add_argument("--simcse-batch", type=int, default=16)
    p.add_argument("--simcse-len", type=int, default=64)
    p.add_argument("--train-threads", type=int, default=1)
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    return parser().parse_known_args(argv)[0]  # the other benchmarks' options are ignored


def _model(spec):
    from l2v_cli.config import load_recipe
    from l2v_cli.modeling.loading import load_model
    from l2v_cli.training.lora import add_lora

    loaded = load_model(spec, dtype="float32", bidirectional=True, lm_head=True)
    lora = load_recipe("unsup").mntp.lora
    model = add_lora(loaded.model, lora, gradient_checkpointing=False)
    model.train()
    return model, loaded.tokenizer


def _matmul_rates(torch) -> dict:
    """GFLOP/s of a 1024^3 matmul in fp32 (and bf16 at 256^3: emulated bf16 is too slow for more)."""
    from l2v_cli.utils.perf import matmul_gflops

    return {"fp32": matmul_gflops("float32", 1024), "bf16": matmul_gflops("bfloat16", 256)}


def _time(fn, steps):
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def run(argv: list[str]) -> dict:
    import torch

    from l2v_cli.data.mntp import MntpCollator, mntp_loss
    from l2v_cli.encoding.encoder import Encoder
    from l2v_cli.stages.contrastive import embed
    from l2v_cli.training.losses import info_nce
    from l2v_cli.training.lora import unwrap
    from l2v_cli.utils.device import cpu_has_fast_bf16
    from l2v_cli.utils.paths import resolve_data_path

    a = parse(argv)
    torch.set_num_threads(a.train_threads)
    model, tok = _model(a.model)
    texts = resolve_data_path("data/unsup/wiki_sentences.txt").read_text().splitlines()[:512]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    head = unwrap(model).get_output_embeddings()
    fast_bf16 = cpu_has_fast_bf16() or torch.cuda.is_available()
    # Without native bf16 (no AMX/AVX512-BF16) a bf16 step is emulated and ~100x slower: not timed.
    results = {"model": a.model, "threads": a.train_threads, "steps": a.steps, "cpu_fast_bf16": fast_bf16,
               "matmul_gflops": _matmul_rates(torch)}

    # ---- MNTP: a grouped batch (every row full length), 20% masked
    ids = tok("\n".join(texts), add_special_tokens=False)["input_ids"]
    n = a.mntp_batch * a.mntp_len
    rows = [{"input_ids": ids[i:i + a.mntp_len]} for i in range(0, n, a.mntp_len)]
    coll = MntpCollator(tok, tok.eos_token_id, 0.2, "80-10-10", seed=0)
    batch = coll(rows, step=0)
    labels = batch.pop("labels")

    def mntp_ours(autocast=False):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(**batch, output_hidden_states=True, logits_to_keep=1, use_cache=False)
            loss = mntp_loss(out.hidden_states[-1], labels, head)
        loss.backward()
        opt.step()
        opt.zero_grad()

    def mntp_reference():
        # llm2vec: labels -100 except masked, the model's own shifted CE over all positions x vocab
        out = model(**batch, labels=labels, use_cache=False)
        out.loss.backward()
        opt.step()
        opt.zero_grad()

    def side_by_side(reference, ours, tokens):
        """Reference and our step timed in the same run (bf16 autocast only where it is native)."""
        t_ref, t_ours = _time(reference, a.steps), _time(ours, a.steps)
        t_bf16 = _time(lambda: ours(True), 1) if fast_bf16 else None
        return {"reference_fp32_s": round(t_ref, 3), "ours_fp32_s": round(t_ours, 3),
                "ours_bf16_autocast_s": t_bf16 and round(t_bf16, 3),
                "reference_tokens_per_s": round(tokens / t_ref, 1), "ours_tokens_per_s": round(tokens / t_ours, 1),
                "speedup_fp32": round(t_ref / t_ours, 2), "speedup_bf16": t_bf16 and round(t_ref / t_bf16, 2)}

    results["mntp"] = {"batch": a.mntp_batch, "seq": a.mntp_len,
                       **side_by_side(mntp_reference, mntp_ours, int(batch["attention_mask"].sum()))}
    log(f"mntp {results['mntp']}")

    # ---- SimCSE: two dropout views of a batch of real sentences
    enc = Encoder(model, tok, pooling="mean", max_length=a.simcse_len)
    sb = enc.collate(enc.tokenize(texts[: a.simcse_batch]))

    def simcse_ours(autocast=False):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            q, d = embed(model, sb, "mean"), embed(model, sb, "mean")
            loss = info_nce(q, d, 20.0, gather=False)
        loss.backward()
        opt.step()
        opt.zero_grad()

    def simcse_reference():
        # llm2vec: full model output (LM head at every position is what a CausalLM computes)
        outs = [model(input_ids=sb["input_ids"], attention_mask=sb["attention_mask"],
                      output_hidden_states=True, use_cache=False) for _ in range(2)]
        m = sb["pool_mask"].unsqueeze(-1).float()
        q, d = [(o.hidden_states[-1] * m).sum(1) / m.sum(1) for o in outs]
        loss = info_nce(q, d, 20.0, gather=False)
        loss.backward()
        opt.step()
        opt.zero_grad()

    results["simcse"] = {"batch": a.simcse_batch, "max_len": a.simcse_len,
                         **side_by_side(simcse_reference, simcse_ours, 2 * int(sb["attention_mask"].sum()))}
    log(f"simcse {results['simcse']}")
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return results
