"""A real training step on the CPU, measured byte for byte: the check of the planner's memory model.

Test harness, not product code (the planner itself never runs a model). `measure_step` runs one
step of this package's own model loading, LoRA, MNTP loss and SimCSE loss; saved-for-backward
bytes come from `torch.autograd.graph.saved_tensors_hooks`, the peak of every allocation of the step
from the profiler's memory timeline (the CPU counterpart of `torch.cuda.max_memory_allocated`).
Both are deterministic byte counts, not timings.
"""

from __future__ import annotations

from typing import Optional

from l2v_cli.modeling.arch import Arch, count_params, lora_params
from l2v_cli.planner.memory import Precision, Shape, activation_bytes, lora_state_bytes, step_peak
from l2v_cli.planner.plan import Setup
from l2v_cli.stages import registry

MNTP, SIMCSE, SUPERVISED = (s.name for s in registry.TRAINING)


def _profile_peak(fn) -> int:
    """Peak bytes allocated above the starting point while `fn` runs: the profiler's memory events
    (every allocation and free, with its size) replayed in program order, read from its public
    Chrome-trace export."""
    import json
    import os
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)
    events = [e for e in trace["traceEvents"] if e.get("name") == "[memory]"
              and e.get("args", {}).get("Device Type") == 0]  # 0 = CPU
    events.sort(key=lambda e: (float(e["ts"]), e["args"].get("Ev Idx", 0)))
    cur = peak = 0
    for e in events:
        cur += e["args"]["Bytes"]
        peak = max(peak, cur)
    return peak


def measure_step(model: str, stage: str = MNTP, batch: int = 2, seq: int = 128, *, lora_r: int = 16,
                 lora_dropout: float = 0.05, attention_dropout: Optional[float] = None,
                 gradient_checkpointing: bool = False, mask_probability: float = 0.2, pad: int = 16,
                 seed: int = 0, profile_peak: bool = True, dtype: str = "float32") -> dict:
    """One real training step on the CPU (float32, or bfloat16 base weights with peft's float32
    adapters), measured byte for byte.

    MNTP: this package's MntpCollator masking and mntp_loss (LM head at masked positions only);
    SimCSE: two passes of the same batch (the last `pad` tokens of row 0 are padding), mean
    pooling and info_nce. Returns saved-activation bytes (saved_tensors_hooks; under gradient
    checkpointing: the tensors saved outside the checkpointed layers + the layer inputs the
    checkpoints keep), the profiler's peak of the step above its start (forward, backward and the
    AdamW step, whose state is allocated then), and the parameter / gradient / optimizer bytes."""
    import contextlib

    import torch

    from l2v_cli.config.schema import LoraConfig
    from l2v_cli.data.mntp import MntpCollator, logit_softcap, mntp_loss
    from l2v_cli.modeling.loading import load_model
    from l2v_cli.stages.contrastive import embed
    from l2v_cli.training.losses import info_nce
    from l2v_cli.training.lora import add_lora, set_attention_dropout, unwrap

    if attention_dropout is None:
        attention_dropout = 0.3 if stage == SIMCSE else 0.0
    loaded = load_model(model, dtype=dtype, attn_implementation="sdpa", bidirectional=True, verify=False,
                        lm_head=True, device="cpu")
    m, tok = loaded.model, loaded.tokenizer
    set_attention_dropout(m, attention_dropout)
    m = add_lora(m, LoraConfig(r=lora_r, alpha=2 * lora_r, dropout=lora_dropout), gradient_checkpointing,
                 seed=seed)
    m.train()
    g = torch.Generator().manual_seed(seed)
    collator = MntpCollator(tok, tok.convert_tokens_to_ids("_") if "_" in tok.get_vocab() else tok.eos_token_id,
                            mask_probability, seed=seed)
    ordinary = collator.random_ids
    ids = ordinary[torch.randint(len(ordinary), (batch, seq), generator=g)]
    attn = torch.ones(batch, seq, dtype=torch.long)
    params = {p.untyped_storage().data_ptr() for p in m.parameters()}
    trainable = [p for p in m.parameters() if p.requires_grad]
    seen: set[int] = set()
    counted = {"saved": 0, "on": False}

    def pack(t):
        if not counted["on"]:
            return t
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr not in params and ptr not in seen:
            seen.add(ptr)
            counted["saved"] += st.nbytes()
        return t

    def layer_input(_mod, args, kwargs):  # what a checkpointed layer keeps: its input
        hs = args[0] if args else kwargs.get("hidden_states")
        if gradient_checkpointing and hs is not None:
            pack(hs)

    body = unwrap(m)
    layers = body.model.layers if hasattr(body, "model") else body.layers
    handles = [layer.register_forward_pre_hook(layer_input, with_kwargs=True) for layer in layers]
    info: dict = {}
    if stage == MNTP:
        masked, labels = collator.mask(ids, attn, step=0)
        info["masked_tokens"] = int((labels[:, 1:] != -100).sum())

        def loss_fn():
            out = m(input_ids=masked, attention_mask=attn, output_hidden_states=True, logits_to_keep=1,
                    use_cache=False)
            return mntp_loss(out.hidden_states[-1], labels, unwrap(m).get_output_embeddings(),
                             softcap=logit_softcap(m.config))
    else:
        attn[0, seq - pad:] = 0
        ids[0, seq - pad:] = tok.pad_token_id
        views = 3 if stage == SUPERVISED else 2
        batch_ = {"input_ids": ids, "attention_mask": attn,
                  "position_ids": (attn.cumsum(1) - 1).clamp(min=0), "pool_mask": attn}

        def loss_fn():
            embs = [embed(m, batch_, "mean") for _ in range(views)]
            return info_nce(embs[0], embs[1], 20.0, negatives=embs[2] if views > 2 else None, gather=False)

    opt = torch.optim.AdamW(trainable, lr=1e-5)

    def step(hooks: bool = True):
        counted["on"] = hooks
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t) if hooks else contextlib.nullcontext():
            loss = loss_fn()
        counted["on"] = False
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)  # as the Trainer does: gradients live from backward to step

    torch.manual_seed(seed)
    if profile_peak:  # a first step allocates AdamW's state; the second is the steady state
        step(hooks=False)
    peak = _profile_peak(step) if profile_peak else None
    if not profile_peak:
        step()
    for hd in handles:
        hd.remove()
    n_lora = sum(p.numel() for p in trainable)
    return {
        "model": model, "stage": stage, "batch": batch, "seq": seq, "lora_r": lora_r,
        "gradient_checkpointing": gradient_checkpointing, "attention_dropout": attention_dropout,
        "lora_dropout": lora_dropout, "dtype": dtype,
        "saved_activation_bytes": counted["saved"], "step_peak_bytes": peak,
        "param_bytes": sum(p.numel() * p.element_size() for p in m.parameters() if not p.requires_grad),
        "lora_params": n_lora, "lora_bytes": 4 * n_lora,
        "grad_bytes": sum(p.numel() * p.element_size() for p in trainable),
        "optimizer_bytes": sum(t.numel() * t.element_size() for st in opt.state.values() for t in st.values()
                               if torch.is_tensor(t) and t.dim() > 0),
        **info,
    }


def estimate_measured(arch: Arch, measured: dict) -> dict:
    """The planner's numbers for a `measure_step` run (CPU, float32, one process, no DeepSpeed)."""
    shape = Shape(stage=measured["stage"], batch=measured["batch"], seq=measured["seq"], lora_r=measured["lora_r"],
                  lora_dropout=measured["lora_dropout"], attention_dropout=measured["attention_dropout"],
                  gradient_checkpointing=measured["gradient_checkpointing"], world=1, gather=False)
    if "masked_tokens" in measured:  # the measured batch's own count (the planner's is an expectation)
        shape.mask_probability = measured["masked_tokens"] / (measured["batch"] * (measured["seq"] - 1))
    # CPU: float dropout masks; in bf16 the adapters (and so their saved tensors) stay float32
    prec = Precision.of(4, "cpu") if measured.get("dtype", "float32") == "float32" else Precision(2, 4, "cpu", 4)
    act = activation_bytes(arch, shape, prec)
    n = lora_params(arch, shape.lora_r)
    states = lora_state_bytes(n, Setup(zero=0, dtype="float32", device="cpu"))
    # the hooks see what is kept (not the layer a checkpoint recomputes in the backward)
    return {"saved_activation_bytes": act["kept"] + act["loss"], "step_peak_bytes": step_peak(act, states["lora_grads"]),
            "lora_params": n, "param_bytes": count_params(arch)["total"] * 4, "grad_bytes": states["lora_grads"],
            "optimizer_bytes": states["optimizer"], "kernel": act["kernel"]}
