"""Masked next-token prediction (MNTP): BERT-style masking, scored the way a decoder predicts.

LLM2Vec's twist on MLM: the model is a (now bidirectional) decoder whose LM head was trained to
predict the *next* token, so a masked token at position i is predicted from the output at
position i-1. Labels stay unshifted (the original id at masked positions, -100 elsewhere);
`mntp_targets` does the shift, and `mntp_loss` runs the LM head only on those positions.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import torch
import torch.nn.functional as F

from l2v_cli.errors import L2VError

IGNORE = -100


# --------------------------------------------------------------------------- the mask token


def _single_token_id(tokenizer, text: str) -> int | None:
    """The id of `text` as one token, or None. A tokenizer that writes "_" as ["▁", "_"] (a
    word-start marker, then the character) yields the "_" piece: the one without the space."""
    vocab = tokenizer.get_vocab()
    if text in vocab:
        return vocab[text]
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) > 1:  # drop pieces that are only a space marker
        ids = [i for i in ids if tokenizer.decode([i]).strip()]
    if len(ids) == 1 and tokenizer.decode(ids).strip() == text.strip():
        return ids[0]
    return None


class MaskChoice(NamedTuple):
    """The MNTP mask token chosen for `mntp.mask_token`, and why."""

    tokenizer: object  # modified in place only when a token was added
    id: int
    added: bool  # a new token was added: the caller must resize the embeddings
    how: str  # e.g. "the family's token '_'", "EOS '</s>' (auto: no earlier choice is one token)"


_UNUSED = re.compile(r"reserved|unused", re.IGNORECASE)


def _unused_special_token(tokenizer) -> tuple[str, int] | None:
    """A reserved/unused special token (Llama-3's <|reserved_special_token_0|>, Gemma's <unused0>):
    in the vocabulary, never produced by tokenising text, free to mean "masked"."""
    taken = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id}
    cands = sorted((i, t) for t, i in tokenizer.get_vocab().items()
                   if _UNUSED.search(t) and i not in taken and i < len(tokenizer))
    return (cands[0][1], cands[0][0]) if cands else None


def _auto_mask_token(tokenizer, family_token: str) -> MaskChoice:
    """`auto`: the first that works of the family's token, the tokenizer's own mask token, '_', a
    reserved/unused special token, EOS, and a new <mask> token. Never refuses."""
    tid = _single_token_id(tokenizer, family_token)
    if tid is not None:
        return MaskChoice(tokenizer, tid, False, f"the family's token {family_token!r}")
    skipped = f"auto: the family's token {family_token!r} is not one token"
    if tokenizer.mask_token is not None:
        return MaskChoice(tokenizer, tokenizer.mask_token_id, False,
                          f"the tokenizer's mask token {tokenizer.mask_token!r} ({skipped})")
    if family_token != "_":
        tid = _single_token_id(tokenizer, "_")
        if tid is not None:
            return MaskChoice(tokenizer, tid, False, f"'_' ({skipped}, no mask token)")
    unused = _unused_special_token(tokenizer)
    if unused is not None:
        return MaskChoice(tokenizer, unused[1], False,
                          f"the unused special token {unused[0]!r} ({skipped}, no mask token, no '_')")
    if tokenizer.eos_token_id is not None:
        return MaskChoice(tokenizer, tokenizer.eos_token_id, False,
                          f"EOS {tokenizer.eos_token!r} ({skipped}, no mask token, no '_', no unused special token)")
    added = tokenizer.add_special_tokens({"mask_token": "<mask>"}) > 0
    return MaskChoice(tokenizer, tokenizer.mask_token_id, added, f"a new '<mask>' token ({skipped} and nothing else is)")


def resolve_mask_token(tokenizer, spec: str, family_token: str = "_", key: str = "mntp.mask_token") -> MaskChoice:
    """The mask token for the recipe's `mntp.mask_token`.

    auto -> see `_auto_mask_token` (starts with the model family's token, `family_token`);
    "_" -> the existing "_" token; "eos" -> EOS; "mask" -> the tokenizer's mask token, or a new
    special "<mask>" token (added=True: the caller must resize the embeddings); anything else ->
    that literal, which must be one token. The tokenizer is modified in place only when a token is added."""
    if spec == "auto":
        return _auto_mask_token(tokenizer, family_token)
    where = f"key {key}"
    if spec == "eos":
        if tokenizer.eos_token_id is None:
            raise L2VError("the tokenizer has no EOS token to use as the MNTP mask", where,
                           "set mntp.mask_token to auto, _ or mask")
        return MaskChoice(tokenizer, tokenizer.eos_token_id, False, f"EOS {tokenizer.eos_token!r}")
    if spec == "mask":
        if tokenizer.mask_token is not None:  # the model already has one: reuse it
            return MaskChoice(tokenizer, tokenizer.mask_token_id, False,
                              f"the tokenizer's mask token {tokenizer.mask_token!r}")
        added = tokenizer.add_special_tokens({"mask_token": "<mask>"}) > 0
        return MaskChoice(tokenizer, tokenizer.mask_token_id, added, "a new '<mask>' token")
    tid = _single_token_id(tokenizer, spec)
    if tid is None:
        pieces = tokenizer.convert_ids_to_tokens(tokenizer.encode(spec, add_special_tokens=False))
        raise L2VError(f"mask token {spec!r} is not a single token for this tokenizer "
                       f"(it splits into {pieces})", where,
                       "use auto (picks one that works), a single-token string, eos, or mask (adds a new token)")
    return MaskChoice(tokenizer, tid, False, f"{spec!r}")


# --------------------------------------------------------------------------- masking


def _generator(seed: int, step: int) -> torch.Generator:
    # An odd multiplier: for one seed, distinct steps always give distinct generator seeds.
    return torch.Generator().manual_seed((seed * 0x9E3779B97F4A7C15 + step) % 2**63)


class MntpCollator:
    """Pads a batch right, masks it and returns input_ids, attention_mask, labels (unshifted).

    Randomness is a pure function of (seed, step): call k uses step = `self.step` (then
    `self.step += 1`), or pass `step=` explicitly. To resume exactly, set `collator.step` to the
    number of batches this process has already collated (global_step * gradient_accumulation_steps);
    samplers that skip batches on resume never call the collator for them. Inside DataLoader
    worker processes each worker has its own copy, so the worker id is mixed in; for exact
    resume there, collate with `pad` in the loader and call `mask(..., step)` in the main process.
    """

    def __init__(self, tokenizer, mask_token_id: int, mask_probability: float = 0.2,
                 strategy: str = "80-10-10", seed: int = 0):
        if strategy not in ("80-10-10", "all"):
            raise L2VError(f"unknown mask strategy {strategy!r}", "key mntp.mask_strategy",
                           "use 80-10-10 or all")
        self.mask_token_id, self.p, self.strategy, self.seed = mask_token_id, mask_probability, strategy, seed
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        special = set(tokenizer.all_special_ids) | {i for i in (self.pad_id,) if i is not None}
        self.special_ids = torch.tensor(sorted(special), dtype=torch.long)
        # random replacements: any ordinary token (never BOS/EOS/PAD, never the mask token itself)
        ordinary = torch.ones(len(tokenizer), dtype=torch.bool)
        ordinary[self.special_ids] = False
        ordinary[mask_token_id] = False
        self.random_ids = ordinary.nonzero().squeeze(1)
        self.step = 0

    def pad(self, examples) -> dict[str, torch.Tensor]:
        seqs = [torch.as_tensor(e["input_ids"] if isinstance(e, dict) else e, dtype=torch.long)
                for e in examples]
        n = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), n), self.pad_id if self.pad_id is not None else 0, dtype=torch.long)
        attn = torch.zeros((len(seqs), n), dtype=torch.long)
        for b, s in enumerate(seqs):
            ids[b, :len(s)], attn[b, :len(s)] = s, 1
        return {"input_ids": ids, "attention_mask": attn}

    def maskable(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Positions that may be masked: real tokens, not special, not position 0 (no
        predecessor exists to predict it from)."""
        ok = attention_mask.bool() & ~torch.isin(input_ids, self.special_ids.to(input_ids.device))
        ok[:, 0] = False
        return ok

    def mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked input_ids, labels) for one batch; deterministic in (seed, step)."""
        g, shape, dev = _generator(self.seed, step), input_ids.shape, input_ids.device
        # every draw has the batch's shape whatever the outcome, so the stream never drifts;
        # drawn on the CPU so that the same (seed, step) gives the same mask on any device
        chosen = (torch.rand(shape, generator=g) < self.p).to(dev) & self.maskable(input_ids, attention_mask)
        how = torch.rand(shape, generator=g).to(dev)
        rand_tok = self.random_ids[torch.randint(len(self.random_ids), shape, generator=g)].to(dev)
        labels = torch.where(chosen, input_ids, IGNORE)
        out = input_ids.clone()
        if self.strategy == "all":
            out[chosen] = self.mask_token_id
        else:  # 80% mask token, 10% random ordinary token, 10% left as is (but still scored)
            out[chosen & (how < 0.8)] = self.mask_token_id
            swap = chosen & (how >= 0.8) & (how < 0.9)
            out[swap] = rand_tok[swap]
        return out, labels

    def __call__(self, examples, step: int | None = None) -> dict[str, torch.Tensor]:
        batch = self.pad(examples)
        if step is None:
            step, self.step = self.step, self.step + 1
            info = torch.utils.data.get_worker_info()
            if info is not None:  # worker w collates batches w, w + n, w + 2n, ...
                step = step * info.num_workers + info.id
        batch["input_ids"], batch["labels"] = self.mask(batch["input_ids"], batch["attention_mask"], step)
        return batch


# --------------------------------------------------------------------------- the loss


def mntp_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(batch_idx, pos_idx, target_ids): the masked token at position i is predicted from the
    output at i-1, so pos_idx = i-1 and target = labels[i]. A label at position 0 is ignored."""
    b, i = (labels[:, 1:] != IGNORE).nonzero(as_tuple=True)
    return b, i, labels[b, i + 1]


def logit_softcap(config) -> float | None:
    """The final-logit soft-capping of a model config (Gemma-2: 30.0), or None."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "final_logit_softcapping", None)


def mntp_loss(hidden_states: torch.Tensor, labels: torch.Tensor, lm_head,
              softcap: float | None = None) -> torch.Tensor:
    """Mean cross-entropy (float32) of the shifted MNTP targets, computing logits only where
    needed: (masked tokens) x vocab instead of (all tokens) x vocab. `lm_head` is any callable
    module (plain Linear, peft-wrapped); `softcap` = `logit_softcap(model.config)`.

    With no masked token in the batch the loss is 0, still connected to the model and the head
    (so every parameter gets a zero gradient and DDP ranks stay in step)."""
    b, pos, target = mntp_targets(labels)
    if target.numel() == 0:
        return lm_head(hidden_states[:1, 0]).float().sum() * 0.0
    # Under mixed precision accelerate returns the model's outputs in float32 while the head's
    # weights stay in the compute dtype (bf16): feed the head its own dtype.
    head_dtype = next(lm_head.parameters()).dtype
    logits = lm_head(hidden_states[b, pos].to(head_dtype)).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, target.to(logits.device))
