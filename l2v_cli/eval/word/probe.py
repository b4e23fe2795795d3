"""The linear probe: multinomial logistic regression on standardised frozen features.

Trained with Adam on mini-batches (seeded, so a rerun gives the same numbers); a few epochs over
~200k CoNLL words take seconds on a CPU. No hidden layer: the probe measures what the features
expose linearly, which is the point of a probe.
"""

from __future__ import annotations

import numpy as np
import torch


def train_probe(x: np.ndarray, y: np.ndarray, n_classes: int, *, epochs: int = 6, batch_size: int = 256,
                lr: float = 2e-3, weight_decay: float = 1e-4, min_steps: int = 1500, seed: int = 0):
    """A fitted predict(x) -> class ids function."""
    g = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy(np.asarray(x, dtype=np.float32))
    mean, std = xt.mean(0), xt.std(0).clamp_min(1e-6)
    xt = (xt - mean) / std
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    torch.manual_seed(seed)
    lin = torch.nn.Linear(xt.shape[1], n_classes)
    opt = torch.optim.AdamW(lin.parameters(), lr=lr, weight_decay=weight_decay)
    per_epoch = (len(xt) + batch_size - 1) // batch_size
    epochs = max(epochs, -(-min_steps // per_epoch))  # small sets: enough steps to converge
    steps = epochs * per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        for s in range(0, len(xt), batch_size):
            i = perm[s:s + batch_size]
            loss = torch.nn.functional.cross_entropy(lin(xt[i]), yt[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()

    @torch.no_grad()
    def predict(xs: np.ndarray) -> np.ndarray:
        z = (torch.from_numpy(np.asarray(xs, dtype=np.float32)) - mean) / std
        return lin(z).argmax(-1).numpy()

    return predict
