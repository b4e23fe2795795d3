"""Matryoshka overhead: a contrastive training step with and without `matryoshka.dims`.

    python -m bench.run matryoshka [--model smollm2-135m] [--steps 4] [--dims 64,128,256,512,full]

One SimCSE step = two dropout views of a batch of real sentences through the LoRA model, InfoNCE,
backward, optimizer step — the stage's own `embed` and `info_nce`. The Matryoshka step is the same
with the loss summed over the prefixes (one forward/backward). The two are timed alternately in
one run (plain, Matryoshka, plain, ...; median of each) so a busy machine slows both alike; the
ratio is the result. Both wall time and this process's CPU time are reported: with one thread on a
shared machine the CPU-time ratio is the steadier one (other processes' load hardly enters it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def log(msg: str) -> None:
    print(f"[bench matryoshka] {msg}", file=sys.stderr, flush=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run matryoshka")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--steps", type=int, default=4, help="timed steps per variant (after one warm-up each)")
    p.add_argument("--simcse-batch", type=int, default=16)
    p.add_argument("--simcse-len", type=int, default=64)
    p.add_argument("--dims", default="64,128,256,512,full")
    p.add_argument("--train-threads", type=int, default=1)
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    return parser().parse_known_args(argv)[0]  # the other benchmarks' options are ignored


def run(argv: list[str]) -> dict:
    import torch

    from bench.train_speed import _model
    from l2v_cli.encoding.dims import parse_dims, resolve_dims
    from l2v_cli.encoding.encoder import Encoder
    from l2v_cli.stages.contrastive import embed
    from l2v_cli.training.losses import info_nce
    from l2v_cli.utils.paths import resolve_data_path

    a = parse(argv)
    torch.set_num_threads(a.train_threads)
    model, tok = _model(a.model)
    enc = Encoder(model, tok, pooling="mean", max_length=a.simcse_len)
    dims = resolve_dims(parse_dims(a.dims), enc.dim, "--dims")
    texts = resolve_data_path("data/unsup/wiki_sentences.txt").read_text().splitlines()[:a.simcse_batch]
    batch = enc.collate(enc.tokenize(texts))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)

    def step(kw):
        t0, c0 = time.perf_counter(), time.process_time()
        loss = info_nce(embed(model, batch, "mean"), embed(model, batch, "mean"), 20.0, gather=False, **kw)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return time.perf_counter() - t0, time.process_time() - c0

    variants = {"plain": {}, "matryoshka": {"dims": dims}}
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    for kw in variants.values():
        step(kw)  # warm-up
    for i in range(a.steps):
        for name, kw in variants.items():
            times[name].append(step(kw))
        log(f"step {i + 1}: " + ", ".join(f"{k} {v[-1][0]:.2f} s (cpu {v[-1][1]:.2f} s)" for k, v in times.items()))
    med = {k: statistics.median(t for t, _ in v) for k, v in times.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}

    # the loss alone on fixed embeddings (what Matryoshka adds), for scale
    g = torch.Generator().manual_seed(0)
    q = torch.randn(a.simcse_batch, enc.dim, generator=g, requires_grad=True)
    d = torch.randn(a.simcse_batch, enc.dim, generator=g, requires_grad=True)

    def loss_only(kw, n=200):
        t0 = time.perf_counter()
        for _ in range(n):
            info_nce(q, d, 20.0, gather=False, **kw).backward()
        return (time.perf_counter() - t0) / n

    return {"model": a.model, "threads": a.train_threads, "batch": a.simcse_batch, "max_len": a.simcse_len,
            "dims": dims, "steps": a.steps, "plain_step_s": round(med["plain"], 3),
            "matryoshka_step_s": round(med["matryoshka"], 3),
            "overhead_ratio": round(med["matryoshka"] / med["plain"], 4),
            "plain_step_cpu_s": round(cpu["plain"], 3), "matryoshka_step_cpu_s": round(cpu["matryoshka"], 3),
            "overhead_ratio_cpu": round(cpu["matryoshka"] / cpu["plain"], 4),
            "plain_all_s": [round(t, 3) for t, _ in times["plain"]],
            "matryoshka_all_s": [round(t, 3) for t, _ in times["matryoshka"]],
            "loss_only_ms": {"plain": round(1e3 * loss_only({}), 3), "matryoshka": round(1e3 * loss_only({"dims": dims}), 3)}}
