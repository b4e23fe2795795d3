"""Bidirectional attention for any decoder, through one generic mechanism — and a probe that proves it.

Mechanism (transformers >= 5): `config.is_causal = False` makes the mask builders produce a
bidirectional (padding-only) mask and makes the attention functions skip their causal flag.
That flag is saved in config.json, so a plain `AutoModel.from_pretrained` of a saved folder is
bidirectional too. Some attention classes read their own `self.is_causal` attribute instead
(seen: StableLM under sdpa), so we also clear that attribute on every module that has one.

Nothing here trusts the mechanism: `probe_bidirectional` runs the model and checks the outcome,
and `enable_bidirectional` refuses (naming the architecture) when the probe fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from l2v_cli.errors import L2VError


class ProbeFailed(L2VError):
    """The bidirectionality probe failed under the kernel in use (`auto` then tries the next one)."""


def _configs(model) -> list:
    """The model's config and every nested sub-config (e.g. `text_config` of multimodal models)."""
    out, todo = [], [model.config]
    while todo:
        cfg = todo.pop()
        if cfg is None or any(cfg is c for c in out):
            continue
        out.append(cfg)
        for name in getattr(cfg, "sub_configs", {}) or {}:
            todo.append(getattr(cfg, name, None))
    return out


def set_bidirectional(model, enabled: bool = True) -> None:
    """Switch attention between bidirectional and causal, in place (no verification)."""
    for cfg in _configs(model):
        cfg.is_causal = not enabled
    for module in model.modules():
        if isinstance(getattr(module, "is_causal", None), bool):
            module.is_causal = not enabled


def is_bidirectional_config(config) -> bool:
    return getattr(config, "is_causal", True) is False


@dataclass
class ProbeReport:
    """Outcome of the probe; `ok` only if every check passed."""

    architecture: str
    attn_implementation: str
    checks: dict[str, bool] = field(default_factory=dict)
    details: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(self.checks.values())

    def failed(self) -> list[str]:
        return [k for k, v in self.checks.items() if not v]


def _hidden(model, input_ids, attention_mask=None) -> torch.Tensor:
    kwargs = {"input_ids": input_ids, "output_hidden_states": True, "use_cache": False}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
        # Positions count real tokens only, so left padding does not shift them.
        kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    out = model(**kwargs)
    return out.hidden_states[-1].detach().float()


def architecture_name(model) -> str:
    cfg = model.config
    archs = getattr(cfg, "architectures", None) or [type(model).__name__]
    return f"{cfg.model_type} ({archs[0]})"


def probe_bidirectional(model, seq_len: int = 8, pad: int = 3, train_mode: bool = False,
                        tol: float = 1e-4) -> ProbeReport:
    """Run the model on small synthetic inputs and check it attends both ways and ignores padding.

    Checks:
      single_no_padding  — batch of one, no attention mask: changing the LAST token changes the
                           FIRST token's hidden state (a causal model leaves it unchanged).
      padded_right/left  — a padded row's real-token states equal the unpadded run's, its first
                           token still sees its last real token, and changing the pad ids changes
                           nothing (padding never leaks).
    `train_mode=True` runs in train mode with grad enabled (so gradient checkpointing is on the
    path); the caller must have made dropout zero for the comparison to be exact.
    """
    cfg = model.config
    vocab = getattr(cfg, "vocab_size", None) or model.get_input_embeddings().weight.shape[0]
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(1234)
    lo = min(10, vocab // 2)  # stay clear of the special tokens at the start of most vocabs
    ids = torch.randint(lo, vocab, (1, seq_len), generator=gen)
    ids_changed = ids.clone()
    ids_changed[0, -1] = lo + (int(ids[0, -1]) - lo + 1 + vocab // 3) % (vocab - lo)
    other = torch.randint(lo, vocab, (1, seq_len + pad), generator=gen)

    report = ProbeReport(architecture_name(model), str(getattr(cfg, "_attn_implementation", "?")))
    was_training = model.training
    model.train(train_mode)
    scale = None
    try:
        with torch.set_grad_enabled(train_mode):
            h = _hidden(model, ids.to(device))
            h_changed = _hidden(model, ids_changed.to(device))
            scale = h[0, 0].abs().max().clamp(min=1e-6)
            d = float((h[0, 0] - h_changed[0, 0]).abs().max() / scale)
            report.details["single_first_token_change"] = d
            report.checks["single_no_padding"] = d > tol

            for side in ("right", "left"):
                x = torch.zeros(2, seq_len + pad, dtype=torch.long)
                mask = torch.zeros_like(x)
                real = slice(0, seq_len) if side == "right" else slice(pad, seq_len + pad)
                padded = slice(seq_len, seq_len + pad) if side == "right" else slice(0, pad)
                x[0, real], mask[0, real] = ids[0], 1
                x[1], mask[1] = other[0], 1
                x[0, padded] = lo
                hb = _hidden(model, x.to(device), mask.to(device))[0, real]
                x_pad2 = x.clone()
                x_pad2[0, padded] = vocab - 1
                hb_pad2 = _hidden(model, x_pad2.to(device), mask.to(device))[0, real]
                x_last = x.clone()
                x_last[0, real.stop - 1] = ids_changed[0, -1]
                hb_last = _hidden(model, x_last.to(device), mask.to(device))[0, real]
                match = float((hb - h[0]).abs().max() / scale)
                leak = float((hb - hb_pad2).abs().max() / scale)
                sees = float((hb[0] - hb_last[0]).abs().max() / scale)
                report.details.update({f"{side}_vs_unpadded": match, f"{side}_pad_leak": leak,
                                       f"{side}_first_token_change": sees})
                # Padded and unpadded runs take different kernels; 1e-3 relative covers fp32 noise.
                report.checks[f"padded_{side}"] = match < 1e-3 and leak < 1e-3 and sees > tol
    finally:
        model.train(was_training)
    return report


def enable_bidirectional(model, verify: bool = True) -> ProbeReport | None:
    """Make `model` bidirectional in place; with `verify`, prove it or raise L2VError."""
    set_bidirectional(model, True)
    if not verify:
        return None
    report = probe_bidirectional(model)
    if not report.ok:
        raise ProbeFailed(
            f"architecture {report.architecture} stays causal or leaks padding under "
            f"attn_implementation={report.attn_implementation!r} (failed checks: "
            f"{', '.join(report.failed())})",
            where="bidirectional probe",
            fix="try `bidir.attn_implementation=eager`; if it still fails this architecture "
            "is not supported — please report it",
        )
    return report
