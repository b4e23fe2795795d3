"""GradCache: the same loss and gradients as the plain big-batch step, with dropout ON.

"Plain" = forward every chunk WITH a graph in the same order from the same seed (so the dropout
masks are the ones GradCache draws in its first pass), concatenate, loss, one backward. With
dropout off, plain is also a single forward of the whole batch. Equality to 1e-5 (fp32) holds
only if GradCache's second forward replays each chunk's RNG state — the negative control shows
the gradients are wrong without the replay.
"""

import contextlib

import pytest
import torch

from l2v_cli.encoding.pooling import mean_pool
from l2v_cli.errors import L2VError
from l2v_cli.modeling.tiny import make_tiny_model
from l2v_cli.training import gradcache
from l2v_cli.training.gradcache import grad_cache_step, peak_memory_for
from l2v_cli.training.losses import info_nce

torch.set_num_threads(2)


def split(x, size):
    if isinstance(x, torch.Tensor):
        return list(x.split(size))
    n = next(iter(x.values())).shape[0]
    return [{k: v[s:s + size] for k, v in x.items()} for s in range(0, n, size)]


def plain_step(model, embed, inputs, loss_fn, chunk, seed=123):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    embs = [torch.cat([embed(c) for c in split(x, chunk)]) for x in inputs]
    loss = loss_fn(*embs)
    loss.backward()
    return loss.detach(), grads(model), torch.get_rng_state(), [e.detach() for e in embs]


def cached_step(model, embed, inputs, loss_fn, chunk, seed=123, **kw):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = grad_cache_step(embed, inputs, loss_fn, chunk, **kw)
    return loss, grads(model), torch.get_rng_state()


def grads(model):
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def assert_same(plain, cached, tol=1e-5):
    loss_p, g_p, rng_p = plain[:3]
    loss_c, g_c, rng_c = cached
    assert not loss_c.requires_grad
    assert loss_c.item() == pytest.approx(loss_p.item(), rel=1e-6)
    assert g_c.keys() == g_p.keys() and len(g_p) > 0
    for k in g_p:
        torch.testing.assert_close(g_c[k], g_p[k], atol=tol, rtol=tol, msg=k)
    # after the step the global RNG is where the first pass left it (replays are forked)
    assert torch.equal(rng_c, rng_p)


def max_rel_diff(a, b):
    return max(((a[k] - b[k]).abs().max() / b[k].abs().max()).item() for k in b)


# --- an MLP with nn.Dropout: SimCSE, the two views are two dropout masks ------------------------

def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                               torch.nn.Linear(32, 8)).train()


X = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
simcse = lambda a, b: info_nce(a, b, 20.0)


@pytest.mark.parametrize("chunk", [1, 3, 4, 8])  # 3 does not divide 8; 8 = one chunk
def test_simcse_dropout_views_match_plain_step(chunk):
    model = mlp()
    plain = plain_step(model, model, [X, X], simcse, chunk)
    view1, view2 = plain[3]
    assert (view1 - view2).abs().max() > 0.1  # dropout really makes two different views
    assert_same(plain, cached_step(model, model, [X, X], simcse, chunk))


def test_matryoshka_loss_matches_plain_step():
    # The prefixes share one forward: GradCache caches d loss / d embedding of the summed loss.
    model = mlp()
    loss_fn = lambda a, b: info_nce(a, b, 20.0, dims=[2, 4, 8], weights=[1.0, 1.0, 0.5])
    plain = plain_step(model, model, [X, X], loss_fn, 3)
    assert_same(plain, cached_step(model, model, [X, X], loss_fn, 3))
    assert max_rel_diff(plain_step(model, model, [X, X], simcse, 3)[1], plain[1]) > 0.05  # control


def test_without_rng_replay_the_gradients_are_wrong(monkeypatch):
    model = mlp()
    plain = plain_step(model, model, [X, X], simcse, 3)
    monkeypatch.setattr(gradcache._RngState, "replay", lambda self: contextlib.nullcontext())
    _, g, _ = cached_step(model, model, [X, X], simcse, 3)
    assert max_rel_diff(g, plain[1]) > 0.05


def test_no_dropout_equals_a_single_full_batch_forward():
    model = mlp().eval()
    one_shot = plain_step(model, model, [X, X], simcse, chunk=len(X))
    assert_same(one_shot, cached_step(model, model, [X, X], simcse, 3))


def test_learnable_loss_parameters_get_their_gradient():
    # e.g. a learnable logit scale: it lives in the loss, not the model
    model = mlp()
    model.log_scale = torch.nn.Parameter(torch.tensor(3.0))
    loss_fn = lambda a, b: info_nce(a, b, model.log_scale.exp())
    plain = plain_step(model, model, [X, X], loss_fn, 3)
    cached = cached_step(model, model, [X, X], loss_fn, 3)
    assert "log_scale" in cached[1]
    assert_same(plain, cached)


# --- a tiny Llama with attention dropout: supervised (query, positive, hard negative) ----------

def tiny_llama():
    model, _ = make_tiny_model("llama")
    for m in model.modules():
        if hasattr(m, "attention_dropout"):
            m.attention_dropout = 0.2
    return model.train()


def token_batch(seed, n=6, length=10):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 200, (n, length), generator=g)
    lengths = torch.randint(3, length + 1, (n,), generator=g)
    mask = (torch.arange(length) < lengths[:, None]).long()  # right padding, varied lengths
    return {"input_ids": ids, "attention_mask": mask}


SUP_INPUTS = [token_batch(1), token_batch(2), token_batch(3)]
supervised = lambda q, p, n: info_nce(q, p, 50.0, negatives=n)


@pytest.mark.parametrize("chunk", [4, 6])  # 4 does not divide 6; 6 = one chunk
def test_supervised_tiny_llama_attention_dropout_matches_plain_step(chunk):
    model = tiny_llama()

    def embed(x):
        return mean_pool(model.model(**x).last_hidden_state, x["attention_mask"])

    plain = plain_step(model, embed, SUP_INPUTS, supervised, chunk)
    # attention dropout is on: the same batch embeds differently on two forwards
    torch.manual_seed(5)
    with torch.no_grad():
        assert (embed(SUP_INPUTS[0]) - embed(SUP_INPUTS[0])).abs().max() > 1e-3
    assert_same(plain, cached_step(model, embed, SUP_INPUTS, supervised, chunk))


def test_simcse_tiny_llama_two_views():
    model = tiny_llama()

    def embed(x):
        return mean_pool(model.model(**x).last_hidden_state, x["attention_mask"])

    batch = token_batch(7, n=5)
    plain = plain_step(model, embed, [batch, batch], simcse, 2)
    assert_same(plain, cached_step(model, embed, [batch, batch], simcse, 2))


# --- integration hooks -------------------------------------------------------------------------

def test_backward_fn_per_chunk_and_no_sync_for_all_but_the_last():
    model = mlp()
    log = []
    in_no_sync = [False]

    @contextlib.contextmanager
    def no_sync():
        in_no_sync[0] = True
        log.append("no_sync")
        yield
        in_no_sync[0] = False

    def backward_fn(t):
        log.append("backward(synced)" if not in_no_sync[0] else "backward")
        t.backward()

    grad_cache_step(model, [X[:5], X[:5]], simcse, 2, backward_fn=backward_fn, no_sync=no_sync)
    # 2 inputs x 3 chunks (2+2+1): 6 backwards, only the last outside no_sync
    assert log == ["no_sync", "backward"] * 5 + ["backward(synced)"]


def test_bad_arguments():
    model = mlp()
    with pytest.raises(L2VError, match="chunk size must be at least 1"):
        grad_cache_step(model, [X, X], simcse, 0)
    with pytest.raises(ValueError, match="share the batch size"):
        grad_cache_step(lambda x: x["a"], [{"a": X, "b": X[:3]}], simcse, 2)


def test_peak_activation_memory_depends_on_chunk_not_batch():
    plain4, plain8 = peak_memory_for(4, None, seq_len=8), peak_memory_for(8, None, seq_len=8)
    gc4, gc8 = peak_memory_for(4, 1, seq_len=8), peak_memory_for(8, 1, seq_len=8)
    assert plain8 > 1.8 * plain4
    # equal up to the chunk views keeping their (bigger) input_ids storage alive
    assert gc8 == pytest.approx(gc4, rel=0.01)
    assert gc8 < plain8 / 4
