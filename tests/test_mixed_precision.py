"""Spec: the training stages run in bf16 (what `dtype: auto` picks on AMX / AVX512-BF16 CPUs and
on GPUs), not only in fp32. Under mixed precision accelerate hands the model's outputs back in
float32 while the frozen weights stay bf16; each stage must still train."""

import json

from safetensors.torch import load_file

from l2v_cli.config import load_recipe
from l2v_cli.stages.mntp import train_mntp
from l2v_cli.stages.simcse import train_simcse


def test_mntp_and_simcse_train_in_bfloat16(tmp_path):
    r = load_recipe("smoke", ["dtype=bfloat16", "mntp.data.max_samples=40", "mntp.train.max_steps=3",
                              "simcse.data.max_samples=40", "simcse.train.max_steps=3"])
    mntp = train_mntp(r, "tiny-llama", tmp_path / "mntp")
    simcse = train_simcse(r, mntp, tmp_path / "simcse")
    for d in (mntp, simcse):
        rows = [json.loads(line) for line in open(d / "metrics.jsonl")]
        losses = [row["loss"] for row in rows if "loss" in row]
        assert losses and all(l == l and l > 0 for l in losses), (d.name, losses)  # finite, not NaN
        lora = load_file(str(d / "adapter" / "adapter_model.safetensors"))
        # LoRA B starts at zero: a trained adapter has moved it
        assert any(float(t.abs().max()) > 0 for k, t in lora.items() if "lora_B" in k), d.name
    cfg = json.loads((mntp / "stage.json").read_text())
    assert cfg["steps"] == 3
