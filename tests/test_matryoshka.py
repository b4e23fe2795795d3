"""Spec: Matryoshka training — the same InfoNCE on each normalised prefix of the one embedding,
summed with the weights; the masking of duplicates unchanged; dims checked with one clear line.
(Cross-process gathering and GradCache with Matryoshka: tests/test_distributed_gather.py and
tests/test_gradcache.py.)"""

import pytest
import torch

from l2v_cli.config import load_recipe
from l2v_cli.encoding.dims import check_dims, parse_dims, resolve_dims, trained_dims_of, untrained_warning
from l2v_cli.errors import L2VError
from l2v_cli.stages.contrastive import ContrastiveTrainer, setup_matryoshka
from l2v_cli.training.losses import info_nce

G = torch.Generator().manual_seed(0)
Q, D, N = (torch.randn(6, 16, generator=G) for _ in range(3))


def test_one_full_width_is_plain_info_nce_exactly():
    assert torch.equal(info_nce(Q, D, 20.0, dims=[16]), info_nce(Q, D, 20.0))


def test_loss_is_the_weighted_sum_over_prefixes():
    by_hand = 0.5 * info_nce(Q[:, :4], D[:, :4], 20.0) + 2.0 * info_nce(Q[:, :8], D[:, :8], 20.0) \
        + 1.0 * info_nce(Q, D, 20.0)
    got = info_nce(Q, D, 20.0, dims=[4, 8, 16], weights=[0.5, 2.0, 1.0])
    torch.testing.assert_close(got, by_hand, rtol=1e-6, atol=1e-6)
    # control: each prefix is normalised on its own — slicing the full-normalised vectors differs
    qn, dn = torch.nn.functional.normalize(Q, dim=-1), torch.nn.functional.normalize(D, dim=-1)
    sliced = sum(w * (torch.nn.functional.cross_entropy(20.0 * qn[:, :m] @ dn[:, :m].T, torch.arange(6)))
                 for m, w in ((4, 0.5), (8, 2.0), (16, 1.0)))
    assert abs(got.item() - sliced.item()) > 1e-2


def test_default_weights_are_one_each():
    torch.testing.assert_close(info_nce(Q, D, 20.0, dims=[4, 16]),
                               info_nce(Q[:, :4], D[:, :4], 20.0) + info_nce(Q, D, 20.0))


def test_hard_negatives_and_false_negative_masking_per_prefix():
    d = Q + 0.3 * D  # positives resemble their queries (so a duplicate of one is a strong negative)
    n = N.clone()
    n[2] = d[0]  # row 2's hard negative is row 0's positive: masked for row 0 at every width
    pid, nid = torch.arange(6), 100 + torch.arange(6)
    nid[2] = pid[0]
    kw = dict(positive_ids=pid, negative_ids=nid)
    got = info_nce(Q, d, 50.0, negatives=n, dims=[4, 16], **kw)
    by_hand = info_nce(Q[:, :4], d[:, :4], 50.0, negatives=n[:, :4], **kw) + info_nce(Q, d, 50.0, negatives=n, **kw)
    torch.testing.assert_close(got, by_hand)
    unmasked = info_nce(Q, d, 50.0, negatives=n, dims=[4, 16])
    assert abs(unmasked.item() - got.item()) > 1e-3  # control: the mask matters here


def test_gradient_reaches_only_through_the_prefixes_it_should():
    q = Q.clone().requires_grad_()
    info_nce(q, D, 20.0, dims=[4, 8]).backward()
    assert q.grad[:, 8:].abs().max() == 0 and q.grad[:, :8].abs().max() > 0


@pytest.mark.parametrize("dims,weights,msg", [([8, 4], None, "increasing"), ([4, 32], None, "1..16"),
                                              ([4, 8], [1.0], "1 weights for 2 dims")])
def test_loss_rejects_bad_dims(dims, weights, msg):
    with pytest.raises(ValueError, match=msg):
        info_nce(Q, D, 20.0, dims=dims, weights=weights)


# --------------------------------------------------------------------------- dims, recipe keys

def test_parse_and_resolve_dims():
    assert parse_dims("64, 128,full") == [64, 128, "full"]
    assert resolve_dims([64, 128, "full"], 576, "x") == [64, 128, 576]
    assert resolve_dims([64, 576], 576, "x") == [64, 576]


@pytest.mark.parametrize("spec,hidden,msg", [
    ("128,64", None, "dims must be strictly increasing, got [128, 64]"),
    ("64,64", None, "strictly increasing"),
    ("full,64", None, "'full' must be the last dim"),
    ("64,abc", None, "dim 'abc' is not a whole number or 'full'"),
    ("0,64", None, "dim 0 must be a positive whole number"),
    ("64,1024", 576, "dim 1024 is larger than the model's hidden size 576"),
    ("64,576,full", 576, "strictly increasing, got [64, 576, full] (full = 576)"),
])
def test_bad_dims_one_line(spec, hidden, msg):
    with pytest.raises(L2VError) as e:
        check_dims(parse_dims(spec, "--dims"), "--dims", hidden)
    assert msg in str(e.value) and "(--dims)" in str(e.value) and "fix:" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("overrides,msg", [
    (["simcse.matryoshka.dims=[128, 64]"], "strictly increasing"),
    (["supervised.matryoshka.dims=[64, full, 256]"], "'full' must be the last dim"),
    (["simcse.matryoshka.dims=[64, full]", "simcse.matryoshka.weights=[1.0]"], "1 values for 2 dims"),
    (["simcse.matryoshka.weights=[1.0]"], "dims is empty"),
    (["simcse.matryoshka.dims=[64, big]"], "wrong type for 'simcse.matryoshka.dims[1]'"),
])
def test_recipe_refuses_bad_matryoshka_sections(overrides, msg):
    with pytest.raises(L2VError, match=None) as e:
        load_recipe("cpu-demo", overrides)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_recipe_accepts_dims_with_full_and_weights():
    r = load_recipe("cpu-demo", ["simcse.matryoshka.dims=[64, 128, full]", "simcse.matryoshka.weights=[1, 1, 2]"])
    assert r.simcse.matryoshka.dims == [64, 128, "full"] and r.simcse.matryoshka.weights == [1.0, 1.0, 2.0]
    assert load_recipe("cpu-demo").simcse.matryoshka.dims == []  # off by default


def test_stage_resolves_dims_against_the_model_width():
    t = ContrastiveTrainer.__new__(ContrastiveTrainer)
    cfg = load_recipe("cpu-demo", ["simcse.matryoshka.dims=[64, full]"]).simcse.matryoshka
    assert setup_matryoshka(t, cfg, 576, "simcse") == {"dims": [64, 576], "weights": [1.0, 1.0]}
    assert t.matryoshka() == {"dims": [64, 576], "weights": [1.0, 1.0]}
    with pytest.raises(L2VError, match="dim 64 is larger than the model's hidden size 32"):
        setup_matryoshka(ContrastiveTrainer.__new__(ContrastiveTrainer), cfg, 32, "simcse")
    off = ContrastiveTrainer.__new__(ContrastiveTrainer)
    assert setup_matryoshka(off, load_recipe("cpu-demo").simcse.matryoshka, 576, "simcse") is None
    assert off.matryoshka() == {}  # control: plain training passes no Matryoshka keywords


def test_trained_dims_record_and_warning(tmp_path):
    assert trained_dims_of(tmp_path) is None
    (tmp_path / "config.json").write_text('{"l2v": {"matryoshka_dims": [64, 128, 576]}}')
    assert trained_dims_of(tmp_path) == [64, 128, 576]
    assert untrained_warning(128, [64, 128, 576], 576) is None
    w = untrained_warning(100, [64, 128, 576], 576)
    assert w.startswith("dim 100 is not a width this model was trained with (Matryoshka dims 64, 128, 576)")
    assert "full width 576 only" in untrained_warning(128, None, 576)
