"""All-gather across data-parallel ranks, with a gradient, for cross-device in-batch negatives.

Contrastive losses get better with more in-batch negatives, so every rank scores its queries
against the candidates of ALL ranks. That needs an all-gather the gradient flows back through.

Gradient convention (the one DDP, DeepSpeed and accelerate all assume):

  * each rank's loss is the mean over its OWN B query rows, scored against the gathered
    (W*B) candidates — `info_nce(..., gather=True)` does exactly that;
  * the backward of the gather SUMS, over ranks, the gradient every rank's loss sends to a
    slice (a reduce-scatter): rank r's slice receives d(sum_r' loss_r')/d(slice_r);
  * DDP then AVERAGES parameter gradients over the W ranks.

  Together: grad = (1/W) * d(sum_r loss_r)/d(theta) = d(mean_r loss_r)/d(theta), and the mean of
  the per-rank losses (each over B rows) is the single-process loss over all W*B rows. So a
  2-process run gives the same gradients as one process with the whole batch
  (tests/test_distributed_gather.py checks it to 1e-5).

  The tempting shortcut — gather with no gradient and put the local tensor back in its slot —
  gives the same loss value but drops the gradient the OTHER ranks' losses send to this rank's
  candidates: wrong gradients (26% off in our measurement). Do not do that.

  The other consistent convention (each rank computes the loss over all W*B query rows and the
  backward keeps only the local gradient) wastes W times the similarity compute; we don't use it.

Every rank must hold the same number of rows (use `drop_last=True`): slices are located at
`rank * B`. `gather_with_grad` checks this and raises L2VError rather than hanging or silently
misaligning.

Without an initialised process group, or with one process, every function here is a no-op.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from l2v_cli.errors import L2VError

__all__ = ["world_info", "is_distributed", "gather_with_grad", "gather_no_grad", "mean_over_ranks"]


def world_info() -> tuple[int, int]:
    """(rank, world_size); (0, 1) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_distributed() -> bool:
    return world_info()[1] > 1


def _check_same_shape(x: torch.Tensor, world: int) -> None:
    # One tiny collective: every rank learns every rank's shape, so all ranks raise together
    # (a rank that raised alone would leave the others blocked in the next collective).
    shape = torch.tensor(list(x.shape), dtype=torch.int64, device=x.device)
    shapes = [torch.empty_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape)
    shapes_l = [tuple(s.tolist()) for s in shapes]
    if any(s != shapes_l[0] for s in shapes_l):
        raise L2VError(
            f"all-gather needs the same tensor shape on every rank, got shapes {shapes_l} "
            f"for ranks 0..{world - 1}",
            where="cross-device negatives (gather_with_grad)",
            fix="give every rank the same per-device batch size (drop_last=True), "
                "or turn off cross-device gathering")


def _all_gather_cat(x: torch.Tensor, world: int) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x)
    return torch.cat(parts, dim=0)


class _GatherWithGrad(torch.autograd.Function):
    """forward: all_gather + cat.  backward: sum the incoming gradient over ranks, keep own slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        rank, world = world_info()
        ctx.rank, ctx.world, ctx.rows = rank, world, x.shape[0]
        return _all_gather_cat(x.contiguous(), world)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Every rank's loss depends on every rank's slice, so a slice's gradient is the SUM of the
        # gradients all ranks' losses send to it (see the module docstring for why SUM is right).
        # all_reduce + own slice is a reduce-scatter. One code path for every backend (gloo has no
        # reduce_scatter_tensor), the one the CPU tests exercise; the tensor is (W*B, D), small
        # next to the parameter all-reduce, so the extra traffic does not matter.
        # On a copy: autograd may hand the same `grad` tensor to other consumers.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_with_grad(x: torch.Tensor, check: bool = True) -> torch.Tensor:
    """Concatenate `x` (B, ...) from all ranks along dim 0, in rank order -> (W*B, ...).

    Differentiable: the gradient reaching rank r's slice is summed over ranks (module docstring),
    so per-rank mean losses + DDP's gradient averaging equal one process on the full batch.
    Rank r's own rows sit at [r*B, (r+1)*B). Identity without a process group or with one process.
    `check=False` skips the equal-shape check (one small collective) when shapes are known equal.
    """
    rank, world = world_info()
    if world == 1:
        return x
    if check:
        _check_same_shape(x, world)
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor, check: bool = True) -> torch.Tensor:
    """Same concatenation without a gradient: for ids, labels, masks — never for embeddings."""
    rank, world = world_info()
    if world == 1:
        return x
    if check:
        _check_same_shape(x, world)
    return _all_gather_cat(x.detach().contiguous(), world)


@torch.no_grad()
def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """Average of a (detached) value over ranks — e.g. the per-rank losses, for logging the
    full-batch loss. Identity without a process group."""
    rank, world = world_info()
    x = x.detach().clone()
    if world == 1:
        return x
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x / world
