"""`l2v plan MODEL --recipe R [--gpus N] [--nodes M] [--deepspeed zero2|zero3] [--gpu-memory 80GB]`.

Parameters, trainable LoRA parameters, per-device memory and tokens per step of every training
stage of a recipe, from the architecture numbers alone (no weights are downloaded). The formulas
are in `l2v_cli.planner` and docs/planning.md.
"""

from __future__ import annotations

from typing import List, Optional

import typer

from l2v_cli.cli.options import launcher_options


def _gib(n: int) -> str:
    return f"{n / 2**30:,.2f}"


def _int(n: int) -> str:
    return f"{n:,}"


def _short(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def render(plan, console) -> None:
    """Rich tables, one per stage."""
    from rich.table import Table
    from rich.text import Text

    from l2v_cli.modeling.arch import count_params, lora_targets
    from l2v_cli.utils.dtypes import dtype_bytes

    a, s = plan.arch, plan.setup
    ds = {0: "no DeepSpeed" + (" (DDP)" if s.world > 1 else ""), 2: "DeepSpeed ZeRO-2", 3: "DeepSpeed ZeRO-3"}[s.zero]
    console.print(Text.assemble(
        (f"{plan.model}", "bold cyan"), f" ({a.model_type}: h {a.hidden}, {a.layers} layers, {a.heads} heads / "
        f"{a.kv_heads} kv, head_dim {a.head_dim}, ffn {a.ffn}, vocab {a.vocab}, "
        f"{'tied' if a.tied else 'untied'} embeddings; from {a.source})"))
    console.print(Text(f"recipe {plan.recipe} · {s.world} {'GPU' if s.device == 'cuda' else 'process'}"
                       f"{'s' if s.world > 1 else ''} ({s.nodes} node{'s' if s.nodes > 1 else ''} × {s.gpus}) · "
                       f"{ds} · {s.dtype} · {_gib(s.gpu_memory)} GiB per device · "
                       f"{_int(count_params(a)['total'])} parameters", style="dim"))
    w = s.world
    wbytes = dtype_bytes(s.dtype)
    for sp in plan.stages:
        sh, d, m = sp.shape, sp.detail, sp.memory
        n = sp.trainable
        targets = lora_targets(a, list(sh.targets))
        console.print()
        head = (f"{sp.title} ({sp.stage}) — batch {sh.batch} × seq {sh.seq} × accum {sp.grad_accum} × world {w} "
                f"= {_int(sp.tokens_per_step)} tokens/step ({_int(sp.examples_per_step)} examples"
                + (f", {sh.passes} forward passes each" if sh.passes > 1 else "") + ")")
        console.print(Text(head, style="bold"))
        console.print(Text(
            f"LoRA r={sh.lora_r} on {len(targets)} linear{'s' if len(targets) > 1 else ''} per layer "
            f"({', '.join(t.replace('_proj', '') for t in targets)}): {_int(n)} trainable = {100 * n / sp.params['total']:.2f}% of "
            f"{_short(sp.params['total'])} · attention kernel: {sp.kernel} · gradient checkpointing: "
            f"{'on' if sh.gradient_checkpointing else 'off'}"
            + (f" · GradCache chunk {sh.grad_cache_chunk}" if sh.grad_cache_chunk else ""), style="dim"))
        t = Table(box=None, header_style="bold", pad_edge=False)
        t.add_column("component")
        t.add_column("GiB/device", justify="right")
        t.add_column("how")
        shard = lambda k: f" / {w} (ZeRO-{s.zero})" if k else ""  # noqa: E731
        t.add_row("weights", _gib(m["weights"]),
                  f"{_int(sp.params['total'])} params × {wbytes} B ({s.dtype})" + shard(s.zero >= 3))
        lb = 2 if s.zero else 4
        t.add_row("LoRA weights", _gib(m["lora_weights"]), f"{_int(n)} × {lb} B" + shard(s.zero >= 3))
        ob = 12 if s.zero else 8
        t.add_row("optimizer (AdamW)", _gib(m["optimizer"]),
                  f"{_int(n)} × {ob} B ({'fp32 master + m + v' if s.zero else 'fp32 m + v'})" + shard(s.zero >= 2))
        fwd, bwd = d["forward_end_peak"], d["backward_peak"]
        t.add_row(Text("step peak", style="bold"), Text(_gib(m["step_peak"]), style="bold"),
                  f"max(forward end {_gib(fwd)}, backward {_gib(bwd)})")
        per_pass = f" × {sh.passes} passes" if sh.passes > 1 and not sh.grad_cache_chunk else ""
        T = (min(sh.grad_cache_chunk, sh.batch) if sh.grad_cache_chunk and sh.passes > 1 else sh.batch) * sh.seq
        k = d["per_layer"] / (T * a.hidden)
        if sh.gradient_checkpointing:
            kept = f"{a.layers} layer inputs × {wbytes}·T·h{per_pass} (checkpointing)"
        else:
            kept = f"{a.layers} layers × {k:.1f}·T·h{per_pass} (no checkpointing)"
        t.add_row("  activations kept", _gib(d["activations_kept"]), kept + f", T = {_int(T)} tokens")
        if d["recomputed_layer"]:
            t.add_row("  recomputed layer", _gib(d["recomputed_layer"]),
                      f"one layer's activations in the backward: {k:.1f}·T·h")
        if not sh.contrastive:
            t.add_row("  MNTP log-probs", _gib(d["loss"]),
                      f"4 B × {_int(d['masked_tokens'])} masked × {_int(a.vocab)} vocab (masked positions only)")
            t.add_row("  forward-end logits", _gib(d["forward_extra"]),
                      f"the same logits in {s.dtype} and fp32 while the loss is computed")
        else:
            t.add_row("  similarity", _gib(d["loss"]),
                      f"4 B × {sh.batch} × {_int(d['candidates_per_query'])} candidates (+ fp32 embeddings)")
        t.add_row("  backward extra", _gib(d["backward_extra"]), "gradients through one layer"
                  + (" + each pass's output gradient" if sh.passes > 1 else ""))
        t.add_row("  LoRA grads", _gib(d["lora_grads"]), f"{_int(n)} × {lb} B" + shard(s.zero >= 2))
        for key, label, how in (
            ("deepspeed_buffers", "DeepSpeed buckets", "reduce bucket h² + allgather of the LoRA params"),
            ("zero3_gathered", "ZeRO-3 gathered params", "stage3_max_live_parameters (≤1e9) + prefetch bucket"),
            ("ddp_buckets", "DDP buckets", "a copy of the fp32 LoRA gradients"),
            ("cuda_runtime", "CUDA context + workspaces", "fixed reserve (not in max_memory_allocated)"),
        ):
            if key in m:
                t.add_row(label, _gib(m[key]), how)
        pct = 100 * sp.total / s.gpu_memory
        verdict = Text(f"of {_gib(s.gpu_memory)}: {'fits' if sp.fits else 'DOES NOT FIT'} ({pct:.0f}%)",
                       style="green" if sp.fits else "bold red")
        t.add_row(Text("total", style="bold"), Text(_gib(sp.total), style="bold"), verdict)
        console.print(t)
        console.print(Text(
            f"activations: {_gib(d['activations_with_checkpointing'])} GiB with gradient checkpointing, "
            f"{_gib(d['activations_without_checkpointing'])} GiB without · per layer {k:.1f} bytes per token per "
            f"hidden unit with LoRA (Korthikanti et al. 2022, GPT layer: 34 with a fused kernel, 34 + 5·a·s/h = "
            f"{34 + 5 * a.heads * sh.seq / a.hidden:.1f} without)"
            + (f" · largest per-device batch that fits: {sp.max_batch}" if sp.max_batch else ""), style="dim"))
        for warn in sp.warnings:
            console.print(Text("warning: " + warn, style="yellow"))


@launcher_options("gpus", "nodes", "deepspeed")
def plan_cmd(
    model: str = typer.Argument(..., metavar="MODEL", help="Alias (`l2v models`), tiny-<arch>, model folder, or hub id in the local cache."),
    overrides: Optional[List[str]] = typer.Argument(None, metavar="[KEY=VALUE]...", help="Recipe overrides, e.g. simcse.train.per_device_batch_size=64."),
    recipe: str = typer.Option("unsup", "--recipe", "-r", help="Recipe name or YAML path."),
    gpu_memory: str = typer.Option("80GB", "--gpu-memory", help="Memory per device, e.g. 80GB, 141GB, 24GB (GB = GiB)."),
    stage: Optional[List[str]] = typer.Option(None, "--stage", help="Plan these training stages (repeatable; default: the recipe's)."),
    device: str = typer.Option("cuda", "--device", help="cuda (default) or cpu: CPU training keeps float dropout masks and no CUDA reserve."),
    json_out: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
    launch: dict = None,
) -> None:
    """Plan a run: parameters, trainable LoRA parameters, memory per device and tokens per step, per stage.

    Nothing is downloaded: the architecture comes from a shipped table, a local config.json or the
    tiny-model builder. A warning says when a stage does not fit, and what would make it fit."""
    from l2v_cli.config import load_recipe
    from l2v_cli.errors import L2VError
    from l2v_cli.planner import make_plan

    if device not in ("cuda", "cpu"):
        raise L2VError(f"unknown --device {device!r}", where="--device", fix="use cuda or cpu")
    r = load_recipe(recipe, overrides or [])
    plan = make_plan(model, r, **launch, gpu_memory=gpu_memory,
                     stages=list(stage) if stage else None, device=device)
    if json_out:
        import json

        print(json.dumps(plan.to_dict(), indent=2))
        return
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    render(plan, console)


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_cmd)
