"""`Encoder`: texts in, one float32 vector per text out. The Python API, and what `l2v encode` runs.

    enc = Encoder.from_pretrained("path/or/alias", pooling="mean")
    emb = enc.encode(texts, instruction="Retrieve semantically similar text: ", normalize=True)

How a text becomes token ids (`Encoder.tokenize`)
------------------------------------------------
The tokenizer's own special tokens are kept: at start-up we tokenise a probe text with and
without special tokens and read off the `prefix` (e.g. [BOS]) and `suffix` (e.g. [EOS] for
tokenizers that append one) its post-processor adds. A text then becomes

    prefix + tok(text) + suffix                 (+ [EOS] for `eos` pooling)
    prefix + tok(instruction + text) + suffix   with an instruction

(a converted model's prefix ends with its attention sink, l2v_cli/modeling/sink.py)

where `tok(...)` is the tokenizer without special tokens. Without an instruction this is exactly
what `tokenizer(text)` returns. With one, instruction and text are tokenised as ONE string,
`tok(instruction + text)`, and the first `prompt_length(instruction)` tokens (the prefix too) are
attended to but not pooled — exactly what sentence-transformers does with a prompt and
`include_prompt: false`, so `encode(texts, instruction=p)` equals `SentenceTransformer(export)
.encode(texts, prompt=p)`. End an instruction where no token can straddle into the text (a
newline, see `as_prefix`): with "query: " a byte-level BPE merges the space into the text's first
word, and that word then falls inside the unpooled count. Without an instruction every real token
is pooled, BOS included (as sentence-transformers' mean pooling does).

Truncation to `max_length` shortens the text only: the prefix, the instruction, the suffix and,
for `eos` pooling, the appended EOS are always kept (an instruction leaving no room is an error).

`eos` pooling appends the tokenizer's real `eos_token_id` (not a literal string such as " </s>",
which most tokenizers split into several ordinary tokens) unless the sequence already ends with it.

Empty text: still a valid input. It is the prefix alone (e.g. [BOS]) when the tokenizer has one;
when nothing would be pooled (no BOS/suffix, or an instruction before an empty text) one filler
token is appended and pooled — the EOS token, else the pad token, else BOS. Texts are never
rejected for their content: NUL, emoji, control characters and lone surrogates (replaced by "?",
since they are not encodable as UTF-8) all encode.

Batching: texts are sorted by token count (longest first), so each batch holds similar lengths
and is padded only to its own longest member; results are written back in input order. Padding
is on the right by default (`padding_side="left"` is supported); `position_ids = cumsum(mask) - 1`
are passed explicitly, so a text gets the same positions — and the same embedding — whatever
its batch and padding side. Everything runs under `torch.inference_mode()`; a causal-LM model is
run through its base model so the LM head is never computed.
"""

from __future__ import annotations

import inspect
import sys
import time
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

from l2v_cli.encoding.dim_scale import read_dim_scale
from l2v_cli.encoding.dims import trained_dims_of, untrained_warning
from l2v_cli.encoding.methods import POOLING_METHODS, check_pooling
from l2v_cli.encoding.pooling import pool
from l2v_cli.errors import L2VError

__all__ = ["Encoder", "Tokenized", "backbone_of", "special_affixes", "POOLING_METHODS"]


@dataclass
class Tokenized:
    """One text's token ids; `ids[pool_start:]` are the tokens that are pooled."""

    ids: list[int]
    pool_start: int

    def __len__(self) -> int:
        return len(self.ids)


def special_affixes(tokenizer, probe: str = "Hello world, this is a probe.") -> tuple[list[int], list[int]]:
    """The special-token ids the tokenizer adds before and after a text (e.g. ([bos], []))."""
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    n = len(plain)
    for k in range(len(full) - n + 1):
        if full[k:k + n] == plain:
            return full[:k], full[k + n:]
    return [], []  # a post-processor that rewrites the text's tokens: add nothing ourselves


def backbone_of(model):
    """The module to run for hidden states: unwraps PEFT, and drops a causal-LM head if present."""
    m = model
    get_base = getattr(m, "get_base_model", None)
    if callable(get_base):  # peft.PeftModel: LoRA layers are injected in place, so this keeps them
        m = get_base()
    try:
        head = m.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        head = None
    if head is not None:
        base = getattr(m, "base_model", m)
        if isinstance(base, torch.nn.Module) and base is not m:
            m = base
    return m


def _clean(text: str) -> str:
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:  # lone surrogates: not representable, the tokenizer would reject them
        return text.encode("utf-8", "replace").decode("utf-8")


class Encoder:
    """Encode texts with a (bidirectional or causal) decoder and a pooling method."""

    def __init__(self, model, tokenizer, pooling: str = "mean", max_length: int = 512,
                 padding_side: str = "right", name: str | None = None):
        self.pooling = check_pooling(pooling)
        if not isinstance(max_length, int) or max_length < 1:
            raise L2VError(f"max_length must be a positive integer, got {max_length!r}",
                           where="--max-length", fix="use e.g. --max-length 512")
        if padding_side not in ("left", "right"):
            raise L2VError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.padding_side = padding_side
        self.name = name or getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__
        self._backbone = backbone_of(model)
        params = inspect.signature(self._backbone.forward).parameters
        var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        self._pass_positions = "position_ids" in params or var_kw
        self._pass_use_cache = "use_cache" in params or var_kw
        self.prefix, self.suffix = special_affixes(tokenizer)
        self.eos_id = getattr(tokenizer, "eos_token_id", None)
        self.pad_id = next((t for t in (getattr(tokenizer, "pad_token_id", None), self.eos_id,
                                        getattr(tokenizer, "bos_token_id", None)) if t is not None), 0)
        fill = [self.eos_id, getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "bos_token_id", None)]
        self.fill_id = next((t for t in fill if t is not None), 0)
        if self.pooling == "eos" and self.eos_id is None:
            raise L2VError("pooling 'eos' needs a tokenizer with an EOS token, and this one has none",
                           where=str(self.name), fix="use --pooling mean or last_token")
        self.last_stats: dict = {}
        self.trained_dims: list[int] | None = None  # Matryoshka widths (None: the full width only)
        self.dim_scale: torch.Tensor | None = None  # per-dimension scale after pooling (encoding/dim_scale.py)
        self._warned_dims: set[int] = set()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, spec, pooling: str = "mean", dtype: str = "auto", max_length: int = 512,
                        attn_implementation: str = "sdpa", bidirectional: bool | None = None,
                        device: str | None = None, trust_remote_code: bool = False,
                        padding_side: str = "right") -> "Encoder":
        """Load MODEL (folder, alias, .gguf, hub id, tiny-<arch>) without an LM head and wrap it."""
        check_pooling(pooling)  # fail before loading weights
        from l2v_cli.modeling.loading import load_model

        loaded = load_model(spec, dtype=dtype, attn_implementation=attn_implementation,
                            bidirectional=bidirectional, lm_head=False, device=device,
                            trust_remote_code=trust_remote_code)
        enc = cls(loaded.model, loaded.tokenizer, pooling=pooling, max_length=max_length,
                  padding_side=padding_side, name=loaded.name)
        enc.path = loaded.path
        enc.trained_dims = trained_dims_of(loaded.path)
        scale = read_dim_scale(loaded.path)
        enc.dim_scale = None if scale is None else torch.from_numpy(scale)
        return enc

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return int(self._backbone.get_input_embeddings().weight.shape[1])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # ------------------------------------------------------------------ tokenisation
    def _plain(self, texts: list[str], max_len: int | None = None) -> list[list[int]]:
        kw = dict(add_special_tokens=False)
        if max_len is not None:
            kw.update(truncation=True, max_length=max_len)
        try:
            return [list(x) for x in self.tokenizer(texts, **kw)["input_ids"]]
        except (TypeError, UnicodeEncodeError):
            return [list(x) for x in self.tokenizer([_clean(t) for t in texts], **kw)["input_ids"]]

    def prompt_length(self, instruction: str) -> int:
        """Leading tokens an instruction takes, counted as sentence-transformers counts a prompt's
        (`include_prompt: false`): the instruction tokenised alone with special tokens, less a
        trailing special token (an appended EOS)."""
        ids = list(self.tokenizer(_clean(instruction))["input_ids"])
        if ids and ids[-1] in set(getattr(self.tokenizer, "all_special_ids", ())):
            ids.pop()
        return len(ids)

    def tokenize(self, texts: Sequence[str], instruction: str | None = None) -> list[Tokenized]:
        """Token ids and pooling start for each text (see the module docstring for the layout)."""
        add_eos = self.pooling == "eos" and not (self.suffix and self.suffix[-1] == self.eos_id)
        budget = self.max_length - len(self.prefix) - len(self.suffix) - int(add_eos)  # body tokens
        context = 0  # tokens before pool_start
        if instruction:
            n_instr = len(self._plain([instruction])[0])
            if n_instr >= budget:
                raise L2VError(f"the instruction takes {n_instr} tokens, leaving no room for the text "
                               f"within max_length={self.max_length}", where="--instruction",
                               fix="shorten the instruction or raise --max-length")
            context = self.prompt_length(instruction)
            texts = [instruction + t for t in texts]  # one string, as sentence-transformers sends it
        out = []
        for body in self._plain(list(texts), budget):
            ids = self.prefix + body[:budget] + self.suffix
            if add_eos:
                ids.append(self.eos_id)
            elif len(ids) <= context:  # nothing to pool (empty text): one filler token
                ids.append(self.fill_id)
            out.append(Tokenized(ids, context))
        return out

    def collate(self, items: Sequence[Tokenized], device=None) -> dict[str, torch.Tensor]:
        """Pad a batch: input_ids, attention_mask, position_ids, pool_mask (all (B, L))."""
        B, L = len(items), max(len(it) for it in items)
        ids = np.full((B, L), self.pad_id, dtype=np.int64)
        mask = np.zeros((B, L), dtype=np.int64)
        pmask = np.zeros((B, L), dtype=bool)
        for i, it in enumerate(items):
            n = len(it)
            off = 0 if self.padding_side == "right" else L - n
            ids[i, off:off + n] = it.ids
            mask[i, off:off + n] = 1
            pmask[i, off + it.pool_start:off + n] = True
        t_mask = torch.from_numpy(mask)
        batch = {"input_ids": torch.from_numpy(ids), "attention_mask": t_mask,
                 "position_ids": (t_mask.cumsum(-1) - 1).clamp(min=0), "pool_mask": torch.from_numpy(pmask)}
        if device is not None:
            batch = {k: v.to(device) for k, v in batch.items()}
        return batch

    # ------------------------------------------------------------------ forward
    def hidden_states(self, batch: dict[str, torch.Tensor], layer: int = -1) -> torch.Tensor:
        """Hidden states (B, L, D) of the backbone for a collated batch: the last layer's (after the
        final norm, as `last_hidden_state`), or `layer`'s output (0 = the embeddings)."""
        kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if self._pass_positions:
            kw["position_ids"] = batch["position_ids"]
        if self._pass_use_cache:
            kw["use_cache"] = False
        if layer != -1:
            return self._backbone(**kw, output_hidden_states=True).hidden_states[layer]
        out = self._backbone(**kw)
        h = getattr(out, "last_hidden_state", None)
        if h is None:
            h = self._backbone(**kw, output_hidden_states=True).hidden_states[-1]
        return h

    def check_dim(self, dim: int | None, where: str = "dim") -> int:
        """`dim` (None = the full width) checked against the model: an error above the hidden
        size; a one-line warning (once per width) for a width it was not trained with."""
        if dim is None:
            return self.dim
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise L2VError(f"dim must be a positive whole number, got {dim!r}", where=where, fix="e.g. --dim 256")
        if dim > self.dim:
            raise L2VError(f"dim {dim} is larger than the model's hidden size {self.dim}", where=where,
                           fix=f"use a width up to {self.dim}"
                           + (f" (trained: {', '.join(map(str, self.trained_dims))})" if self.trained_dims else ""))
        msg = untrained_warning(dim, self.trained_dims, self.dim)
        if msg and dim not in self._warned_dims:
            self._warned_dims.add(dim)
            print(f"l2v: warning: {msg}", file=sys.stderr, flush=True)
        return dim

    def encode(self, texts: Iterable[str] | str, instruction: str | None = None, batch_size: int = 32,
               normalize: bool = False, show_progress: bool = False, dim: int | None = None) -> np.ndarray:
        """Embed `texts`: np.ndarray float32 of shape (N, D), rows in input order.

        A single string is treated as a list of one (result shape (1, D)). `instruction` is
        attended to but not pooled. `dim`: keep the first `dim` numbers of each embedding (a
        Matryoshka prefix; result (N, dim)); `normalize` then scales each row to unit L2 norm.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise L2VError(f"text #{i} is a {type(t).__name__}, not a string", where="encode(texts)",
                               fix="pass a list of strings")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise L2VError(f"batch_size must be a positive integer, got {batch_size!r}", where="--batch-size")
        width = self.check_dim(dim, "encode(dim=...)")
        t0 = time.perf_counter()
        out = np.zeros((len(texts), width), dtype=np.float32)
        if not texts:
            return out
        items = self.tokenize(texts, instruction)
        order = sorted(range(len(items)), key=lambda i: -len(items[i]))  # stable: ties keep input order
        device = self.device
        progress = None
        if show_progress:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            progress = Progress("[progress.description]{task.description}", BarColumn(),
                                MofNCompleteColumn(), TimeRemainingColumn(),
                                console=Console(stderr=True), transient=True)
            task = progress.add_task("encoding", total=len(texts))
            progress.start()
        was_training = self.model.training
        self.model.eval()
        n_tokens = n_padded = 0
        try:
            with torch.inference_mode():
                for start in range(0, len(order), batch_size):
                    idx = order[start:start + batch_size]
                    batch = self.collate([items[i] for i in idx], device)
                    h = self.hidden_states(batch)
                    emb = pool(h, batch["pool_mask"], self.pooling)
                    if self.dim_scale is not None:
                        emb = emb * self.dim_scale.to(emb)
                    emb = emb[:, :width]
                    if normalize:
                        emb = torch.nn.functional.normalize(emb, dim=-1)
                    out[idx] = emb.cpu().numpy()
                    n_tokens += int(batch["attention_mask"].sum())
                    n_padded += batch["input_ids"].numel()
                    if progress is not None:
                        progress.advance(task, len(idx))
        finally:
            self.model.train(was_training)
            if progress is not None:
                progress.stop()
        self.last_stats = {"texts": len(texts), "tokens": n_tokens, "padded_tokens": n_padded,
                           "seconds": time.perf_counter() - t0}
        return out

    __call__ = encode

    def __repr__(self) -> str:
        return (f"Encoder({self.name!r}, pooling={self.pooling!r}, max_length={self.max_length}, "
                f"dim={self.dim}, dtype={self.dtype}, device={self.device})")
