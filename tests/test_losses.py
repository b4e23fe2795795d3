"""info_nce and text_ids, single process: exact values against hand computations."""

import math

import pytest
import torch

from l2v_cli.training.losses import false_negative_mask_from_ids, info_nce, text_ids


def _cos(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def hand_info_nce(q, cands, scale, excluded=()):
    """Mean over rows i of -log softmax(scale * cos(q_i, c))[i], candidates in `excluded`
    ((row, candidate) pairs) left out of the row's softmax. Plain Python floats."""
    total = 0.0
    for i, qi in enumerate(q):
        logits = {c: scale * _cos(qi, cand) for c, cand in enumerate(cands) if (i, c) not in excluded}
        lse = math.log(sum(math.exp(v) for v in logits.values()))
        total += lse - logits[i]
    return total / len(q)


def t(rows):
    return torch.tensor(rows, dtype=torch.float64).float()


# Similar directions, so that at scale 20-50 no row's loss underflows float32.
Q = [[1.0, 0.2, 0.1], [0.8, 0.6, 0.1], [0.7, 0.3, 0.6]]
D = [[0.9, 0.3, 0.2], [0.85, 0.5, 0.2], [0.6, 0.4, 0.5]]
N = [[0.95, 0.25, 0.1], [0.8, 0.55, 0.0], [0.7, 0.2, 0.55]]


def test_two_orthogonal_rows_by_hand():
    # cos = 1 with the own positive, 0 with the other: loss = -log(e^s / (e^s + e^0)).
    q = torch.eye(2)
    for s in (1.0, 2.0, 5.0):
        assert info_nce(q, q.clone(), s).item() == pytest.approx(math.log1p(math.exp(-s)), rel=1e-6)


def test_in_batch_matches_hand_computation():
    got = info_nce(t(Q), t(D), 20.0)
    assert got.item() == pytest.approx(hand_info_nce(Q, D, 20.0), rel=1e-5)


def test_hard_negatives_are_extra_candidates_after_the_positives():
    got = info_nce(t(Q), t(D), 50.0, negatives=t(N))
    assert got.item() == pytest.approx(hand_info_nce(Q, D + N, 50.0), rel=1e-5)
    # any number of hard negatives (here 2 for 3 rows)
    got2 = info_nce(t(Q), t(D), 50.0, negatives=t(N[:2]))
    assert got2.item() == pytest.approx(hand_info_nce(Q, D + N[:2], 50.0), rel=1e-5)


def test_scale_multiplies_the_cosines():
    for s in (1.0, 20.0, 50.0):
        assert info_nce(t(Q), t(D), s).item() == pytest.approx(hand_info_nce(Q, D, s), rel=1e-5)
    assert info_nce(t(Q), t(D), 20.0).item() != pytest.approx(info_nce(t(Q), t(D), 50.0).item())


def test_cosine_not_dot_product():
    # rescaling any vector leaves the loss unchanged
    a = info_nce(t(Q), t(D), 20.0, negatives=t(N))
    b = info_nce(t(Q) * 7.0, t(D) * 0.1, 20.0, negatives=t(N) * 3.0)
    assert a.item() == pytest.approx(b.item(), rel=1e-5)


def test_gather_is_a_no_op_in_a_single_process():
    a = info_nce(t(Q), t(D), 20.0, negatives=t(N), gather=True)
    b = info_nce(t(Q), t(D), 20.0, negatives=t(N), gather=False)
    assert torch.equal(a, b)


# --- false negatives -------------------------------------------------------------------------
# Texts: row 0's positive "a" is also row 1's hard negative (candidate 3 + 1 = 4) and row 2's
# positive (candidate 2) — llm2vec issue #178. Row 2's positive "a" is likewise row 0's positive
# (candidate 0) and row 1's hard negative (candidate 4). Row 1 has no duplicates.
POS_TEXTS = ["a", "b", "a"]
NEG_TEXTS = ["x", "a", "y"]
EXCLUDED = {(0, 2), (0, 4), (2, 0), (2, 4)}


def test_false_negative_mask_marks_exactly_the_duplicates_of_the_rows_positive():
    pos, neg = text_ids(POS_TEXTS), text_ids(NEG_TEXTS)
    mask = false_negative_mask_from_ids(pos, torch.cat([pos, neg]), torch.arange(3))
    expected = torch.zeros(3, 6, dtype=torch.bool)
    for i, c in EXCLUDED:
        expected[i, c] = True
    assert torch.equal(mask, expected)


def test_false_negative_masking_changes_the_loss_to_the_masked_hand_computation():
    # The duplicate texts have the same embedding, as they would from a real encoder.
    d = [D[0], D[1], D[0]]
    n = [N[0], D[0], N[2]]
    kw = dict(negatives=t(n), positive_ids=text_ids(POS_TEXTS), negative_ids=text_ids(NEG_TEXTS))
    masked = info_nce(t(Q), t(d), 50.0, **kw)
    assert masked.item() == pytest.approx(hand_info_nce(Q, d + n, 50.0, EXCLUDED), rel=1e-5)
    unmasked = info_nce(t(Q), t(d), 50.0, negatives=t(n))
    assert unmasked.item() == pytest.approx(hand_info_nce(Q, d + n, 50.0), rel=1e-5)
    # each duplicate scored exactly like the target, so it only ever added to the loss
    assert unmasked.item() - masked.item() > 0.1


def test_explicit_mask_is_or_ed_and_never_masks_the_target():
    explicit = torch.zeros(3, 6, dtype=torch.bool)
    explicit[1, 5] = True
    explicit[1, 1] = True  # the row's own target: ignored
    got = info_nce(t(Q), t(D), 50.0, negatives=t(N), false_negative_mask=explicit)
    assert got.item() == pytest.approx(hand_info_nce(Q, D + N, 50.0, {(1, 5)}), rel=1e-5)


def test_distinct_ids_mask_nothing():
    ids = text_ids(["p0", "p1", "p2"])
    a = info_nce(t(Q), t(D), 20.0, positive_ids=ids)
    assert a.item() == pytest.approx(info_nce(t(Q), t(D), 20.0).item(), rel=1e-6)


def test_simcse_duplicate_sentences_in_a_batch_are_masked():
    # SimCSE: positive_ids are the texts' own ids; the duplicate row is not a negative.
    ids = text_ids(["same", "other", "same"])
    got = info_nce(t(Q), t(D), 20.0, positive_ids=ids)
    assert got.item() == pytest.approx(hand_info_nce(Q, D, 20.0, {(0, 2), (2, 0)}), rel=1e-5)


def test_masking_with_hard_negatives_requires_their_ids():
    with pytest.raises(ValueError, match="negative_ids"):
        info_nce(t(Q), t(D), 50.0, negatives=t(N), positive_ids=text_ids(POS_TEXTS))


# --- dtype ------------------------------------------------------------------------------------

def test_float32_loss_for_bf16_embeddings_with_bf16_gradients():
    q = t(Q).bfloat16().requires_grad_()
    d = t(D).bfloat16().requires_grad_()
    loss = info_nce(q, d, 50.0)
    assert loss.dtype == torch.float32
    # computed on the bf16 values in float32, not in bf16
    ref = info_nce(q.detach().float(), d.detach().float(), 50.0)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    loss.backward()
    assert q.grad.dtype == torch.bfloat16 and d.grad.dtype == torch.bfloat16


def test_shape_errors():
    with pytest.raises(ValueError, match="d has shape"):
        info_nce(t(Q), t(D[:2]), 20.0)
    with pytest.raises(ValueError, match="negatives has shape"):
        info_nce(t(Q), t(D), 20.0, negatives=torch.zeros(3, 4))


# --- text ids ---------------------------------------------------------------------------------

def test_text_ids_are_stable_int64_hashes():
    ids = text_ids(["hello", "hello", "world", ""])
    assert ids.dtype == torch.int64
    assert ids[0] == ids[1] and ids[0] != ids[2]
    # BLAKE2b-64 of the UTF-8 bytes, independent of PYTHONHASHSEED, process and version
    assert ids[0].item() == 9022087748821825191
