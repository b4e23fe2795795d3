"""Spec: `supervised.bare_queries` — a seeded share of the supervised queries trains without its
instruction (the no-prompt call users make), the rest as the paper does; documents are always bare."""

from __future__ import annotations

import pytest

from l2v_cli.config import load_recipe
from l2v_cli.encoding import Encoder, as_prefix
from l2v_cli.errors import L2VError
from l2v_cli.modeling.tiny import save_tiny_model
from l2v_cli.stages.supervised import TripletCollator, bare_query

INSTR = "Given a premise, retrieve a hypothesis that is entailed by the premise"
QUERIES = [f"query number {i} about topic {i % 7}" for i in range(400)]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Encoder:
    return Encoder.from_pretrained(save_tiny_model("llama", tmp_path_factory.mktemp("tiny") / "llama"),
                                   dtype="float32")


def rows(queries):
    return [{"query": q, "positive": f"pos {q}", "negative": f"neg {q}", "instruction": INSTR} for q in queries]


def test_the_draw_is_seeded_per_query_and_hits_the_share():
    for share in (0.25, 0.5):
        drawn = [bare_query(q, share, seed=42) for q in QUERIES]
        assert abs(sum(drawn) / len(drawn) - share) < 0.08
        assert drawn == [bare_query(q, share, seed=42) for q in QUERIES]  # same on every rank / rerun
        assert drawn != [bare_query(q, share, seed=7) for q in QUERIES]   # the seed changes the draw
    assert not any(bare_query(q, 0.0, seed=42) for q in QUERIES)
    assert all(bare_query(q, 1.0, seed=42) for q in QUERIES)


def test_bare_queries_are_tokenised_as_the_no_prompt_call_and_the_rest_with_the_instruction(encoder):
    batch = rows(QUERIES[:12])
    got = TripletCollator(encoder, bare_queries=0.5, seed=42).queries(batch)
    told = encoder.tokenize([r["query"] for r in batch], instruction=as_prefix(INSTR))
    plain = encoder.tokenize([r["query"] for r in batch])
    expected_bare = [bare_query(r["query"], 0.5, 42) for r in batch]
    assert 0 < sum(expected_bare) < len(batch)  # this batch mixes both kinds
    for item, b, t, p in zip(got, expected_bare, told, plain):
        assert (item.ids, item.pool_start) == ((p.ids, p.pool_start) if b else (t.ids, t.pool_start))
    assert all(p.pool_start == 0 for p, b in zip(got, expected_bare) if b)  # every token pooled, as ST does
    # the paper's setting (the default): every query carries the instruction
    default = TripletCollator(encoder).queries(batch)
    assert [(i.ids, i.pool_start) for i in default] == [(t.ids, t.pool_start) for t in told]


def test_documents_stay_bare_whatever_the_share(encoder):
    batch = rows(QUERIES[:6])
    out = TripletCollator(encoder, bare_queries=1.0, seed=42)(batch)
    plain = encoder.collate(encoder.tokenize([r["positive"] for r in batch]))
    assert out["p"]["input_ids"].tolist() == plain["input_ids"].tolist()
    assert out["q"]["input_ids"].tolist() == encoder.collate(encoder.tokenize(QUERIES[:6]))["input_ids"].tolist()


def test_a_share_outside_zero_to_one_is_refused_with_the_key():
    with pytest.raises(L2VError, match="supervised.bare_queries"):
        load_recipe("smoke", ["supervised.bare_queries=1.5"])
