"""Cross-device negatives: 2 processes (gloo, CPU), each with half of a global batch, must give
the loss and the gradients of ONE process with the whole batch.

Convention under test (l2v_cli/training/gather.py): each rank's loss is the mean over its own rows
against all ranks' candidates; DDP averages the gradients over ranks. Then
  mean over ranks of the rank losses == the 1-process loss, and
  every rank's DDP-averaged gradient == the 1-process gradient (1e-5).
Negative control: gathering WITHOUT a gradient and putting the local tensor back in its slot gives
the same loss but clearly different gradients.

The two ranks run once (module fixture, ~10 s) and save their results; the tests compare them.
"""

import datetime
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from l2v_cli.errors import L2VError
from l2v_cli.training import gather as gather_mod
from l2v_cli.training import losses as losses_mod
from l2v_cli.training.gather import gather_with_grad, mean_over_ranks, world_info
from l2v_cli.training.gradcache import grad_cache_step
from l2v_cli.training.losses import info_nce

WORLD, B, DIN = 2, 4, 6  # 2 ranks x 4 rows
N = WORLD * B


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(DIN, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8))


def global_batch():
    """Inputs for the whole batch, identical on every process, with cross-rank duplicates:
    rank 1 row 1's hard negative (global 5) IS rank 0 row 0's positive (global 0), and
    rank 1 row 2's positive (global 6) IS rank 0 row 1's positive (global 1)."""
    g = torch.Generator().manual_seed(1)
    q, d, n = (torch.randn(N, DIN, generator=g) for _ in range(3))
    d = d + 0.5 * q  # positives resemble their queries
    pos_ids, neg_ids = torch.arange(N), 100 + torch.arange(N)
    n[5], neg_ids[5] = d[0], pos_ids[0]
    d[6], pos_ids[6] = d[1], pos_ids[1]
    return q, d, n, pos_ids, neg_ids


def loss_in_batch(eq, ed, en, pid, nid):          # SimCSE-like: positives only, scale 20
    return info_nce(eq, ed, 20.0)


def loss_supervised(eq, ed, en, pid, nid):        # hard negatives + false-negative mask, scale 50
    return info_nce(eq, ed, 50.0, negatives=en, positive_ids=pid, negative_ids=nid)


def loss_matryoshka(eq, ed, en, pid, nid):        # the supervised case on prefixes 2, 4 and all 8
    return info_nce(eq, ed, 50.0, negatives=en, positive_ids=pid, negative_ids=nid, dims=[2, 4, 8],
                    weights=[1.0, 0.5, 2.0])


def embed_all(model, q, d, n):
    # one forward for all three inputs (one DDP forward per backward)
    e = model(torch.cat([q, d, n]))
    return e[:len(q)], e[len(q):2 * len(q)], e[2 * len(q):]


def grads_of(model):
    return {k: p.grad.detach().clone() for k, p in model.named_parameters()}


def _bad_gather(x, check=True):
    """The WRONG way: gather without grad, re-insert the local tensor (own slice has a gradient,
    but the other ranks' losses no longer send theirs to it)."""
    rank, world = world_info()
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank] = x
    return torch.cat(parts)


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    from torch.nn.parallel import DistributedDataParallel as DDP

    q, d, n, pid, nid = (t[rank * B:(rank + 1) * B] for t in global_batch())
    res = {"world_info": world_info()}

    for name, loss_fn in [("in_batch", loss_in_batch), ("supervised", loss_supervised),
                          ("matryoshka", loss_matryoshka)]:
        model = make_model()
        ddp = DDP(model)
        loss = loss_fn(*embed_all(ddp, q, d, n), pid, nid)
        loss.backward()
        res[name] = (loss.item(), mean_over_ranks(loss).item(), grads_of(model))

    # negative control, the in-batch case with the no-grad gather
    good = losses_mod.gather_with_grad
    losses_mod.gather_with_grad = _bad_gather
    try:
        model = make_model()
        ddp = DDP(model)
        loss = loss_in_batch(*embed_all(ddp, q, d, n), pid, nid)
        loss.backward()
        res["no_grad_gather"] = (loss.item(), mean_over_ranks(loss).item(), grads_of(model))
    finally:
        losses_mod.gather_with_grad = good

    # GradCache + DDP (no_sync on all but the last chunk) + gather: the supervised case, chunk 3
    # (does not divide the 4 local rows)
    model = make_model()
    ddp = DDP(model)
    loss = grad_cache_step(ddp, [q, d, n], lambda a, b, c: loss_supervised(a, b, c, pid, nid),
                           chunk_size=3, no_sync=ddp.no_sync)
    res["gradcache"] = (loss.item(), mean_over_ranks(loss).item(), grads_of(model))
    model = make_model()  # the same with Matryoshka
    ddp = DDP(model)
    loss = grad_cache_step(ddp, [q, d, n], lambda a, b, c: loss_matryoshka(a, b, c, pid, nid),
                           chunk_size=3, no_sync=ddp.no_sync)
    res["gradcache_matryoshka"] = (loss.item(), mean_over_ranks(loss).item(), grads_of(model))

    # unequal local batch sizes: every rank raises the same clear error (no hang)
    try:
        gather_with_grad(torch.zeros(rank + 1, 8))
        res["unequal"] = None
    except L2VError as e:
        res["unequal"] = str(e)

    torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    ctx = mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=False)
    deadline = time.time() + 120
    while not ctx.join(timeout=5):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("distributed workers did not finish in 120 s")
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def reference(loss_fn):
    """One process, whole batch."""
    assert not dist.is_initialized()
    model = make_model()
    q, d, n, pid, nid = global_batch()
    loss = loss_fn(*embed_all(model, q, d, n), pid, nid)
    loss.backward()
    return loss.item(), grads_of(model)


def max_rel_diff(a, b):
    return max(((a[k] - b[k]).abs().max() / b[k].abs().max()).item() for k in b)


def assert_grads_close(got, ref, tol=1e-5):
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=tol, rtol=tol, msg=k)


def test_world_info(ranks):
    assert [r["world_info"] for r in ranks] == [(0, 2), (1, 2)]
    assert world_info() == (0, 1)  # no process group in the test process


@pytest.mark.parametrize("case,loss_fn", [("in_batch", loss_in_batch),
                                          ("supervised", loss_supervised),
                                          ("gradcache", loss_supervised),
                                          ("matryoshka", loss_matryoshka),
                                          ("gradcache_matryoshka", loss_matryoshka)])
def test_two_ranks_equal_one_process_full_batch(ranks, case, loss_fn):
    ref_loss, ref_grads = reference(loss_fn)
    (l0, mean0, g0), (l1, mean1, g1) = ranks[0][case], ranks[1][case]
    assert l0 != pytest.approx(l1)                      # ranks score different rows...
    assert (l0 + l1) / 2 == pytest.approx(ref_loss, rel=1e-6)  # ...whose mean is the full loss
    assert mean0 == pytest.approx(ref_loss, rel=1e-6) and mean1 == pytest.approx(ref_loss, rel=1e-6)
    assert_grads_close(g0, ref_grads)
    assert_grads_close(g1, ref_grads)


def test_false_negative_mask_sees_duplicates_on_other_ranks(ranks):
    # The gathered ids mask the cross-rank duplicates: the 2-rank loss equals the masked 1-process
    # loss (above), and that differs from the unmasked one.
    model = make_model()
    q, d, n, pid, nid = global_batch()
    eq, ed, en = embed_all(model, q, d, n)
    unmasked = info_nce(eq, ed, 50.0, negatives=en).item()
    masked_ref, _ = reference(loss_supervised)
    assert abs(unmasked - masked_ref) > 1e-3
    assert (ranks[0]["supervised"][0] + ranks[1]["supervised"][0]) / 2 == pytest.approx(masked_ref, rel=1e-6)


def test_gather_without_grad_same_loss_wrong_gradients(ranks):
    ref_loss, ref_grads = reference(loss_in_batch)
    (l0, _, g0), (l1, _, g1) = ranks[0]["no_grad_gather"], ranks[1]["no_grad_gather"]
    assert (l0 + l1) / 2 == pytest.approx(ref_loss, rel=1e-6)   # the loss looks right...
    assert max_rel_diff(g0, ref_grads) > 0.1                    # ...the gradients are not
    # while the correct gather matches to ~1e-7
    assert max_rel_diff(ranks[0]["in_batch"][2], ref_grads) < 1e-5


def test_unequal_batch_sizes_raise_a_clear_error_on_every_rank(ranks):
    for r in ranks:
        assert r["unequal"] is not None
        assert "same tensor shape on every rank" in r["unequal"]
        assert "[(1, 8), (2, 8)]" in r["unequal"] and "drop_last=True" in r["unequal"]


def test_single_process_gather_is_identity():
    x = torch.randn(3, 4, requires_grad=True)
    assert gather_with_grad(x) is x
    assert gather_mod.gather_no_grad(x) is x
