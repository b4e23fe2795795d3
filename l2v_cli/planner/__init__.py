"""Run planner: parameters, LoRA size and per-device memory of each training stage, before a run.

`l2v plan MODEL --recipe R [--gpus N] [--nodes M] [--deepspeed zero2|zero3]` answers "does this fit,
and where does the memory go?" without downloading weights: the architecture numbers come from
`l2v_cli.modeling.arch` (configs/models.yaml beside each alias, a local config.json, the hub
cache or the tiny-model builder).

  memory.py  the memory model of one training step (docs/planning.md explains every term)
  plan.py    a recipe's training stages on a setup, with warnings and the way out

The memory model is checked against a real step measured byte for byte on the CPU by the tests
(tests/memory_probe.py). Nothing here imports torch or transformers at module level.
"""

from l2v_cli.modeling.arch import Arch, arch_from_config, count_params, lora_params, lora_targets, resolve_arch
from l2v_cli.planner.memory import (GIB, Precision, Shape, activation_bytes, attention_kernel, backward_peak,
                                    layer_saved_bytes, lora_state_bytes, masked_tokens, runtime_bytes, step_peak)
from l2v_cli.planner.plan import (DEFAULT_GPU_MEMORY, FORMULAS, Plan, Setup, StagePlan, make_plan, parse_deepspeed,
                                  parse_memory, plan_stage)

__all__ = ["Arch", "DEFAULT_GPU_MEMORY", "FORMULAS", "GIB", "Plan", "Precision", "Setup", "Shape", "StagePlan",
           "activation_bytes", "arch_from_config", "attention_kernel", "backward_peak", "count_params",
           "layer_saved_bytes", "lora_params", "lora_state_bytes", "lora_targets", "make_plan", "masked_tokens",
           "parse_deepspeed", "parse_memory", "plan_stage", "resolve_arch", "runtime_bytes", "step_peak"]
