"""Spec: the FLOP model behind the convert summary's "of peak" column matches counted FLOPs."""

import pytest
import torch


@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3"])
def test_forward_flops_per_token_match_torch_flop_counter(arch):
    from torch.utils.flop_counter import FlopCounterMode

    from l2v_cli.encoding.encoder import backbone_of
    from l2v_cli.modeling.tiny import make_tiny_model
    from l2v_cli.modeling.arch import arch_from_config
    from l2v_cli.utils.perf import forward_flops_per_token, lora_train_flops_per_token

    model, _ = make_tiny_model(arch, attn_implementation="eager")  # eager: attention as counted matmuls
    body, seq = backbone_of(model), 48
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        body(input_ids=torch.randint(5, 500, (2, seq)))
    measured = counter.get_total_flops() / (2 * seq)
    expected = forward_flops_per_token(arch_from_config(model.config.to_dict()), seq)
    assert expected == pytest.approx(measured, rel=0.01)
    assert lora_train_flops_per_token(arch_from_config(model.config.to_dict()), seq) == 2 * expected


def test_matmul_rate_is_positive_and_finite():
    from l2v_cli.utils.perf import matmul_gflops

    r = matmul_gflops("float32", 128, 1)
    assert 0 < r < 1e6
