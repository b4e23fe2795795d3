"""`l2v plan`: exact parameter counts, LoRA size, the memory model's structure, and the memory model
checked against a real training step of tiny-llama measured byte for byte on the CPU."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import pytest

from l2v_cli.errors import L2VError
from l2v_cli.planner import (GIB, Precision, Setup, Shape, activation_bytes, count_params, lora_params, make_plan,
                             parse_memory, plan_stage, resolve_arch)
from memory_probe import estimate_measured, measure_step


def shipped(alias: str):
    return resolve_arch(alias)[0]

# The error docs/planning.md states for the estimate against a measured step (tiny-llama, CPU):
SAVED_TOLERANCE = 0.02  # saved-for-backward activation bytes (measured: < 1%)
PEAK_TOLERANCE = 0.06  # peak of the step's allocations (measured: < 5% on tiny-llama, < 2% on SmolLM2)


def test_param_counts_exact_for_the_7b_models():
    assert count_params(shipped("llama2-7b"))["total"] == 6_738_415_616  # "6.74B"
    assert count_params(shipped("mistral-7b"))["total"] == 7_241_732_096  # "7.24B"
    assert round(count_params(shipped("llama2-7b"))["total"] / 1e9, 2) == 6.74
    assert round(count_params(shipped("mistral-7b"))["total"] / 1e9, 2) == 7.24


def test_every_alias_config_in_models_yaml_matches_its_size():
    """The config numbers configs/models.yaml ships beside each alias give exactly its `params`."""
    from l2v_cli.modeling.aliases import load_aliases
    from l2v_cli.modeling.arch import shipped_arch

    with_config = [a for a in load_aliases().values() if a.config]
    assert {a.name for a in with_config} >= {"llama2-7b", "mistral-7b", "smollm2-135m", "gemma3-270m"}
    for a in with_config:
        assert count_params(shipped_arch(a))["total"] == a.params, a.name


def test_tiny_llama_count_equals_the_real_model():
    from l2v_cli.modeling.tiny import make_tiny_model

    model, _ = make_tiny_model("llama")
    arch, alias = resolve_arch("tiny-llama")
    assert alias.name == "tiny-llama"
    assert count_params(arch)["total"] == sum(p.numel() for p in model.parameters())


def test_lora_params_llama2_r16_all_seven_projections():
    h, f, L, r = 4096, 11008, 32, 16
    by_hand = L * r * (4 * (h + h) + 2 * (h + f) + (f + h))  # q k v o (h->h), gate up (h->f), down (f->h)
    assert by_hand == 39_976_960
    assert lora_params(shipped("llama2-7b"), 16) == by_hand
    assert lora_params(shipped("llama2-7b"), 16, ["q_proj", "v_proj"]) == L * r * 2 * (h + h)
    # Mistral: k and v are 1024 wide (8 kv heads)
    assert lora_params(shipped("mistral-7b"), 16) == 32 * 16 * (2 * (4096 + 4096) + 2 * (4096 + 1024)
                                                              + 3 * (4096 + 14336))


def test_lora_params_equal_peft_on_tiny_llama():
    from l2v_cli.config.schema import LoraConfig
    from l2v_cli.modeling.tiny import make_tiny_model
    from l2v_cli.training.lora import add_lora

    model, _ = make_tiny_model("llama")
    peft_model = add_lora(model, LoraConfig(r=8, alpha=16, dropout=0.0))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert lora_params(resolve_arch("tiny-llama")[0], 8) == trainable


def _shape(**kw) -> Shape:
    base = dict(stage="train-mntp", batch=32, seq=512, gradient_checkpointing=True)
    return Shape(**{**base, **kw})


def test_zero3_divides_weights_by_world_size_and_zero2_does_not():
    arch = shipped("llama2-7b")
    p = count_params(arch)["total"]
    z3 = plan_stage(arch, _shape(), 1, Setup(gpus=8, zero=3))
    z2 = plan_stage(arch, _shape(), 1, Setup(gpus=8, zero=2))
    assert z3.memory["weights"] == math.ceil(2 * p / 8)
    assert z2.memory["weights"] == 2 * p
    n = lora_params(arch, 16)
    assert z2.memory["optimizer"] == math.ceil(12 * n / 8) and z2.memory["lora_weights"] == 2 * n
    assert z3.memory["lora_weights"] == math.ceil(2 * n / 8)
    two_nodes = plan_stage(arch, _shape(), 1, Setup(gpus=8, nodes=2, zero=3))
    assert two_nodes.memory["weights"] == math.ceil(2 * p / 16)
    assert two_nodes.tokens_per_step == 32 * 512 * 16


def test_gradient_checkpointing_lowers_activations():
    arch, prec = shipped("mistral-7b"), Precision.of(2)
    for stage in ("train-mntp", "train-simcse", "train-supervised"):
        sh = _shape(stage=stage, seq=128)
        on = activation_bytes(arch, sh, prec, checkpointing=True)
        off = activation_bytes(arch, sh, prec, checkpointing=False)
        assert on["activations"] < off["activations"] / 5, stage
        assert on["kept"] == sh.passes * (arch.layers * 2 * sh.batch * sh.seq * arch.hidden
                                          + 4 * sh.batch * sh.seq * arch.hidden + 4 * sh.batch * sh.seq
                                          + (5 * sh.batch * sh.seq if stage != "train-mntp" else 0))
    sp = plan_stage(arch, _shape(gradient_checkpointing=False), 1, Setup(gpus=8, zero=2))
    assert sp.detail["activations_with_checkpointing"] < sp.detail["activations_without_checkpointing"]


def test_simcse_keeps_two_passes_and_supervised_three():
    arch, prec = shipped("llama2-7b"), Precision.of(2)
    for ckpt in (False, True):
        sim = activation_bytes(arch, _shape(stage="train-simcse", seq=128, batch=64), prec, checkpointing=ckpt)
        sup = activation_bytes(arch, _shape(stage="train-supervised", seq=128, batch=64), prec, checkpointing=ckpt)
        # GradCache with chunk = batch keeps exactly one pass of the same shape
        one = activation_bytes(arch, _shape(stage="train-simcse", seq=128, batch=64, grad_cache_chunk=64), prec,
                               checkpointing=ckpt)
        assert sim["kept"] == 2 * one["kept"]
        assert sup["kept"] == 3 * one["kept"]
        assert sim["recompute"] == one["recompute"]  # one layer at a time, whatever the passes
    # GradCache: the chunk, not the batch, sets the activations
    small = activation_bytes(arch, _shape(stage="train-simcse", seq=128, batch=512, grad_cache_chunk=16), prec)
    assert small["kept"] < activation_bytes(arch, _shape(stage="train-simcse", seq=128, batch=16), prec)["kept"]


def test_mntp_logits_only_at_masked_positions():
    arch = shipped("llama3-8b")
    sh = _shape(batch=8, seq=512, mask_probability=0.2)
    act = activation_bytes(arch, sh, Precision.of(2))
    masked = round(0.2 * 8 * 511)
    assert act["loss"] == 4 * masked * arch.vocab + 16 * masked
    assert act["loss"] < 4 * 8 * 512 * arch.vocab / 4  # far below the full-sequence logits


def test_warning_for_an_impossible_setting_and_the_fix_fits():
    from l2v_cli.config import load_recipe

    recipe = load_recipe("unsup", ["mntp.train.gradient_checkpointing=false"])
    plan = make_plan("llama2-7b", recipe, gpus=1, gpu_memory="24GB", stages=["train-mntp"])
    sp = plan.stages[0]
    assert not sp.fits and not plan.fits
    assert sp.warnings and sp.warnings[0].startswith("does not fit")
    assert "gradient_checkpointing=true" in sp.warnings[0]
    assert sp.max_batch is not None and sp.max_batch < 32
    fixed = plan_stage(plan.arch, dataclasses.replace(sp.shape, batch=sp.max_batch), 1, plan.setup, check=False)
    assert fixed.fits
    bigger = plan_stage(plan.arch, dataclasses.replace(sp.shape, batch=sp.max_batch + 1), 1, plan.setup, check=False)
    assert not bigger.fits
    # 7B weights alone do not fit 8 GB: no batch size helps
    tiny_gpu = make_plan("llama2-7b", recipe, gpus=1, gpu_memory="8GB", stages=["train-mntp"]).stages[0]
    assert tiny_gpu.max_batch is None and "zero3" in tiny_gpu.warnings[0]


def test_the_paper_setup_fits_8x80gb():
    from l2v_cli.config import load_recipe

    recipe = load_recipe("unsup")
    for model in ("llama2-7b", "mistral-7b"):
        for ds in ("zero2", "zero3"):
            plan = make_plan(model, recipe, gpus=8, deepspeed=ds, gpu_memory="80GB")
            assert plan.fits and [sp.stage for sp in plan.stages] == ["train-mntp", "train-simcse"]
            assert all(10 * GIB < sp.total < 40 * GIB for sp in plan.stages)


def test_unknown_alias_is_an_l2v_error():
    with pytest.raises(L2VError, match="unknown model alias"):
        resolve_arch("llama9-1t")
    with pytest.raises(L2VError, match="no tiny model|unknown model alias"):
        resolve_arch("tiny-notanarch")


def test_parse_memory():
    assert parse_memory("80GB") == parse_memory("80GiB") == parse_memory("80") == 80 * GIB
    assert parse_memory("40000MB") == 40000 * 2**20
    with pytest.raises(L2VError):
        parse_memory("lots")


def test_local_folder_reads_config_json(tmp_path):
    cfg = {"model_type": "mistral", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 32000, "tie_word_embeddings": False}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    arch, _ = resolve_arch(str(tmp_path))
    assert count_params(arch)["total"] == 7_241_732_096


@pytest.mark.parametrize("stage", ["train-mntp", "train-simcse"])
def test_estimate_matches_a_measured_step_on_tiny_llama(stage):
    """saved_tensors_hooks byte count + profiler peak of one real step vs the planner's numbers."""
    arch, _ = resolve_arch("tiny-llama")
    for ckpt in (False, True):
        m = measure_step("tiny-llama", stage, batch=2, seq=64, gradient_checkpointing=ckpt)
        est = estimate_measured(arch, m)
        assert m["lora_params"] == est["lora_params"]
        assert m["optimizer_bytes"] == est["optimizer_bytes"]  # AdamW m + v, fp32
        assert m["grad_bytes"] == est["grad_bytes"]
        saved_err = abs(est["saved_activation_bytes"] - m["saved_activation_bytes"]) / m["saved_activation_bytes"]
        peak_err = abs(est["step_peak_bytes"] - m["step_peak_bytes"]) / m["step_peak_bytes"]
        assert saved_err < SAVED_TOLERANCE, (stage, ckpt, m, est)
        assert peak_err < PEAK_TOLERANCE, (stage, ckpt, m, est)


def _l2v(*argv):
    return subprocess.run([sys.executable, "-m", "l2v_cli", *argv], capture_output=True, text=True, timeout=120)


def test_cli_prints_the_table():
    out = _l2v("plan", "llama2-7b", "--recipe", "unsup", "--gpus", "8", "--deepspeed", "zero2")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for needle in ("MNTP (train-mntp)", "SimCSE (train-simcse)", "39,976,960", "6,738,415,616", "total",
                   "fits", "ZeRO-2", "131,072 tokens/step"):
        assert needle in text, needle


def test_cli_json_and_overrides():
    out = _l2v("plan", "mistral-7b", "--gpus", "8", "--deepspeed", "zero3", "--json",
               "simcse.train.per_device_batch_size=64")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["setup"]["world_size"] == 8 and data["setup"]["deepspeed"] == "zero3"
    simcse = data["stages"][1]
    assert simcse["per_device_batch_size"] == 64 and simcse["forward_passes"] == 2
    assert data["params"]["total"] == 7_241_732_096


def test_cli_unknown_alias_is_one_line():
    out = _l2v("plan", "llama9-1t")
    assert out.returncode == 2
    assert out.stderr.startswith("l2v: error: unknown model alias 'llama9-1t'")
    assert len(out.stderr.strip().splitlines()) == 1


def test_cli_warns_when_it_does_not_fit():
    out = _l2v("plan", "llama2-7b", "--gpu-memory", "24GB", "mntp.train.gradient_checkpointing=false",
               "--stage", "train-mntp")
    assert out.returncode == 0, out.stderr
    assert "DOES NOT FIT" in out.stdout and "warning: does not fit" in out.stdout
