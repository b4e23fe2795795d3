"""What SimCSE and supervised training share: embedding a collated batch, the GradCache step, and
Matryoshka (the loss on every trained prefix of the one embedding: `info_nce(dims=...)`)."""

from __future__ import annotations

import contextlib

import torch

from l2v_cli.encoding.dims import resolve_dims
from l2v_cli.encoding.pooling import pool
from l2v_cli.training.spine import L2VTrainer

MODEL_KEYS = ("input_ids", "attention_mask", "position_ids")


def embed(model, batch: dict, pooling: str) -> torch.Tensor:
    """Pooled embeddings of a collated batch (instruction tokens and padding excluded by pool_mask)."""
    # logits_to_keep=1: we keep the causal-LM wrapper (adapter names match across stages) but
    # skip nearly all of its vocabulary projection.
    out = model(**{k: batch[k] for k in MODEL_KEYS}, output_hidden_states=True, logits_to_keep=1,
                use_cache=False)
    return pool(out.hidden_states[-1], batch["pool_mask"], pooling)


class ContrastiveTrainer(L2VTrainer):
    """Subclasses define `views(inputs) -> list[batch]` and `loss_from(embeddings, inputs)`."""

    pooling = "mean"
    grad_cache_chunk_size = 0
    matryoshka_dims: list[int] | None = None
    matryoshka_weights: list[float] | None = None

    def matryoshka(self) -> dict:
        """`info_nce`'s Matryoshka keywords (none without Matryoshka)."""
        if not self.matryoshka_dims:
            return {}
        return {"dims": self.matryoshka_dims, "weights": self.matryoshka_weights}

    def views(self, inputs) -> list[dict]:
        raise NotImplementedError

    def loss_from(self, embs: list[torch.Tensor], inputs) -> torch.Tensor:
        raise NotImplementedError

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        views = self.views(inputs)
        for v in views:
            self.count_tokens(v["attention_mask"])
        loss = self.loss_from([embed(model, v, self.pooling) for v in views], inputs)
        return (loss, None) if return_outputs else loss

    def step_impl(self, model, inputs, num_items_in_batch=None):
        if not self.grad_cache_chunk_size:
            return super().step_impl(model, inputs, num_items_in_batch)
        return self._grad_cache_training_step(model, inputs)

    def _grad_cache_training_step(self, model, inputs):
        """Chunked embedding with cached gradients: memory of one chunk, gradients of the full batch."""
        from l2v_cli.errors import L2VError
        from l2v_cli.training.gradcache import grad_cache_step

        if self.is_deepspeed_enabled:
            raise L2VError("GradCache is not supported under DeepSpeed (its engine steps on every backward)",
                           where="grad_cache_chunk_size", fix="use --launcher torchrun, or set grad_cache_chunk_size=0")
        model.train()
        inputs = self._prepare_inputs(inputs)
        views = self.views(inputs)
        for v in views:
            self.count_tokens(v["attention_mask"])
        gas = self.current_gradient_accumulation_steps
        no_sync = getattr(model, "no_sync", None) or contextlib.nullcontext
        loss = grad_cache_step(
            lambda chunk: embed(model, chunk, self.pooling), views,
            lambda embs: self.loss_from(embs, inputs) / gas, self.grad_cache_chunk_size,
            backward_fn=lambda t: self.accelerator.backward(t), no_sync=no_sync)
        return loss.detach() if torch.is_tensor(loss) else torch.tensor(loss)


def setup_matryoshka(trainer: ContrastiveTrainer, cfg, hidden: int, section: str) -> dict | None:
    """Resolve a stage's `matryoshka` section against the model's width onto the trainer; returns
    what stage.json records ({"dims", "weights"}), or None without Matryoshka."""
    if not cfg.dims:
        return None
    dims = resolve_dims(cfg.dims, hidden, f"{section}.matryoshka.dims")
    weights = [float(w) for w in cfg.weights] if cfg.weights is not None else [1.0] * len(dims)
    trainer.matryoshka_dims, trainer.matryoshka_weights = dims, weights
    return {"dims": dims, "weights": weights}
