"""Training data: raw text (MNTP, SimCSE), MNTP masking and loss, supervised triplets and batching."""

from l2v_cli.data.mntp import (MntpCollator, logit_softcap, mntp_loss, mntp_targets,
                               resolve_mask_token)
from l2v_cli.data.pairs import (NamedSet, OneDatasetBatchSampler, TripletRows, instruction_for,
                                load_supervised)
from l2v_cli.data.text import group_texts, load_hub, load_texts, tokenize_texts

__all__ = [
    "load_texts", "load_hub", "tokenize_texts", "group_texts",
    "resolve_mask_token", "MntpCollator", "mntp_targets", "mntp_loss", "logit_softcap",
    "load_supervised", "NamedSet", "TripletRows", "OneDatasetBatchSampler", "instruction_for",
]
