"""GradCache (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup"): the exact gradient of a contrastive loss over a big batch, with activation memory of one
small chunk.

A contrastive loss couples every row to every other row, so plain gradient accumulation (loss per
micro-batch) is NOT the big-batch gradient: each micro-batch would only see its own negatives.
GradCache splits the computation at the embeddings instead:

  (a) embed every input in chunks WITHOUT a graph, remembering the RNG state before each chunk;
  (b) compute the loss on the full (detached, requires_grad) embeddings — including any
      cross-rank gather — and backprop it to get d loss / d embedding (cheap: no model involved);
  (c) re-run each chunk WITH a graph, under the same RNG state, and backprop the cached embedding
      gradient through it: backward of sum(emb_chunk * grad_chunk) gives exactly
      d loss / d params restricted to that chunk; summed over chunks, the full-batch gradient.

RNG replay is essential, not a detail: with dropout on, step (c) must reproduce step (a)'s
embeddings bit for bit, or the gradient belongs to different embeddings than the loss saw. For
SimCSE it is the whole method — the two "views" of a text ARE two dropout masks. Pass the views as
two inputs (`[batch, batch]`); each chunk of each view gets its own RNG state, so the views
differ from each other and each is replayed exactly. Replays run inside `torch.random.fork_rng`,
so after the step the global RNG is where step (a) left it.
CPU and CUDA generators are saved/restored (the current CUDA device and the devices of the inputs);
other accelerators' generators are not.

Distributed: step (c)'s backward goes through `backward_fn` (e.g. `accelerator.backward`, which
also applies loss scaling; step (b) is deliberately unscaled so the cached gradients are true
gradients and scaling happens once) and all chunks but the last run under `no_sync()` (e.g.
`ddp_model.no_sync`), so DDP all-reduces the accumulated gradients once, at the last chunk. The
forward of a chunk is inside `no_sync()` too: DDP decides at forward time whether to sync.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Mapping, Sequence, Union

import torch

from l2v_cli.errors import L2VError

__all__ = ["grad_cache_step", "peak_memory_for"]

Inputs = Union[torch.Tensor, Mapping[str, object]]


def _batch_size(x: Inputs) -> int:
    if isinstance(x, torch.Tensor):
        return x.shape[0]
    sizes = {v.shape[0] for v in x.values() if isinstance(v, torch.Tensor)}
    if len(sizes) != 1:
        raise ValueError(f"grad_cache_step: the tensors of one input must share the batch size "
                         f"(dim 0), got sizes {sorted(sizes)}")
    return sizes.pop()


def _split(x: Inputs, size: int) -> list[Inputs]:
    n = _batch_size(x)
    if isinstance(x, torch.Tensor):
        return [x[s:s + size] for s in range(0, n, size)]
    return [{k: (v[s:s + size] if isinstance(v, torch.Tensor) else v) for k, v in x.items()}
            for s in range(0, n, size)]


def _cuda_devices(x: Inputs) -> list[int]:
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return []
    tensors = [x] if isinstance(x, torch.Tensor) else [v for v in x.values()
                                                        if isinstance(v, torch.Tensor)]
    devs = {torch.cuda.current_device()} | {t.device.index for t in tensors if t.is_cuda}
    return sorted(devs)


class _RngState:
    """The CPU (and CUDA) generator states at one moment; `replay()` re-enters them."""

    def __init__(self, cuda_devices: list[int]):
        self.cpu = torch.get_rng_state()
        self.cuda_devices = cuda_devices
        self.cuda = [torch.cuda.get_rng_state(d) for d in cuda_devices]

    @contextlib.contextmanager
    def replay(self):
        # fork_rng restores the current states on exit: replays don't disturb the global stream.
        with torch.random.fork_rng(devices=self.cuda_devices):
            torch.set_rng_state(self.cpu)
            for d, s in zip(self.cuda_devices, self.cuda):
                torch.cuda.set_rng_state(s, d)
            yield


def grad_cache_step(embed_fn: Callable[[Inputs], torch.Tensor],
                    inputs_list: Sequence[Inputs],
                    loss_fn: Callable[..., torch.Tensor],
                    chunk_size: int,
                    backward_fn: Callable[[torch.Tensor], None] = lambda t: t.backward(),
                    no_sync: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                    ) -> torch.Tensor:
    """Accumulate into `.grad` the gradient of `loss_fn(*embeddings)` over the full batch.

    embed_fn(chunk) -> (n, D) embeddings for a chunk of one input (a tensor, or a dict of
        batch-first tensors; non-tensor values are passed through whole).
    inputs_list: the inputs, e.g. [queries, positives, negatives] or, for SimCSE, [batch, batch].
    loss_fn(emb_0, emb_1, ...) -> scalar, on the full embeddings of each input (may gather
        across ranks, e.g. `lambda q, d: info_nce(q, d, 20.0)`).
    chunk_size: rows per forward; the last chunk may be smaller.
    backward_fn / no_sync: see the module docstring (DDP / accelerate integration).
    Returns the loss, detached. The optimizer step is the caller's.
    """
    if chunk_size < 1:
        raise L2VError(f"GradCache chunk size must be at least 1, got {chunk_size}",
                       where="grad_cache_step", fix="set a positive chunk size")
    if not inputs_list:
        raise ValueError("grad_cache_step: inputs_list is empty")
    chunks = [_split(x, chunk_size) for x in inputs_list]

    # (a) embeddings without a graph; RNG state saved before every chunk's forward.
    states: list[list[_RngState]] = []
    cached: list[torch.Tensor] = []
    with torch.no_grad():
        for x, parts in zip(inputs_list, chunks):
            devs = _cuda_devices(x)
            st, embs = [], []
            for part in parts:
                st.append(_RngState(devs))
                embs.append(embed_fn(part))
            states.append(st)
            cached.append(torch.cat(embs, dim=0).detach().requires_grad_())

    # (b) the loss on full embeddings and its gradient w.r.t. them. Plain autograd, not
    # backward_fn: the model is not in this graph, and loss scaling must apply once, in (c).
    with torch.enable_grad():
        loss = loss_fn(*cached)
        loss.backward()
    grads = [None if e.grad is None else e.grad.split(chunk_size) for e in cached]
    del cached

    # (c) re-forward each chunk under its saved RNG state; backprop the cached gradient.
    work = [(i, j) for i, g in enumerate(grads) if g is not None for j in range(len(g))]
    if not work:
        raise ValueError("grad_cache_step: the loss does not depend on any input's embeddings")
    for k, (i, j) in enumerate(work):
        sync = k == len(work) - 1
        with (contextlib.nullcontext() if sync else no_sync()):
            with states[i][j].replay():
                emb = embed_fn(chunks[i][j])
            # d/d(emb) of sum(emb * g) is g: the chain rule continues into the model from here.
            backward_fn((emb * grads[i][j].to(emb.dtype)).sum())
    return loss.detach()


class _SavedBytes:
    """Bytes of activations autograd keeps for backward (parameters excluded): the memory
    GradCache saves, measured the same way on CPU and GPU. Whole storages are counted, once each
    per graph (a saved view keeps its whole base alive)."""

    def __init__(self, model: torch.nn.Module):
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.seen: set[int] = set()
        self.current = self.peak = 0

    def new_graph(self):
        self.seen, self.current = set(), 0

    def pack(self, t: torch.Tensor):
        s = t.untyped_storage()
        if s.data_ptr() not in self.params and s.data_ptr() not in self.seen:
            self.seen.add(s.data_ptr())
            self.current += s.nbytes()
            self.peak = max(self.peak, self.current)
        return t

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)


def peak_memory_for(batch: int, chunk: int | None, seq_len: int = 32, arch: str = "llama",
                    n_inputs: int = 2) -> int:
    """Peak autograd activation bytes of one training step of a tiny `arch` model (mean-pooled
    embeddings, InfoNCE over `n_inputs` inputs of `batch` texts of `seq_len` tokens): plain
    (chunk=None) or GradCache with `chunk` rows per forward. For benchmarks, not a unit test:
    plain grows with batch, GradCache with chunk only."""
    from l2v_cli.modeling.tiny import make_tiny_model
    from l2v_cli.training.losses import info_nce

    model, _ = make_tiny_model(arch)
    model.train()
    body = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    meter = _SavedBytes(model)
    g = torch.Generator().manual_seed(0)
    inputs = [{"input_ids": torch.randint(5, 100, (batch, seq_len), generator=g),
               "attention_mask": torch.ones(batch, seq_len, dtype=torch.long)}
              for _ in range(n_inputs)]

    def embed(x, fresh_graph: bool):
        if fresh_graph and torch.is_grad_enabled():
            meter.new_graph()   # the previous chunk's graph was freed by its backward
        with meter.hooks():
            h = body(**x).last_hidden_state
        m = x["attention_mask"].unsqueeze(-1).float()
        return (h * m).sum(1) / m.sum(1)

    loss_fn = lambda *e: info_nce(e[0], e[1], 20.0, negatives=e[2] if len(e) > 2 else None)
    if chunk is None:
        meter.new_graph()
        loss_fn(*[embed(x, False) for x in inputs]).backward()
    else:
        grad_cache_step(lambda x: embed(x, True), inputs, loss_fn, chunk)
    return meter.peak
