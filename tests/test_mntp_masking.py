"""Spec: MNTP masks like BERT but scores like a decoder — the token masked at position i is
predicted from the output at position i-1, i.e. the causal-LM loss restricted to masked tokens."""

import pytest
import torch
import torch.nn.functional as F

from l2v_cli.data.mntp import (MntpCollator, logit_softcap, mntp_loss, mntp_targets,
                               resolve_mask_token)
from l2v_cli.errors import L2VError
from l2v_cli.modeling.tiny import make_tiny_model


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from l2v_cli.modeling.tiny import tokenizer_dir

    return AutoTokenizer.from_pretrained(tokenizer_dir())


def ordinary_batch(tok, shape, seed=0):
    """Random non-special token ids (BOS-free: every position but 0 is maskable)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, len(tok), shape, generator=g)  # ids 0-3 are <unk> <s> </s> <pad>


def collate(tok, ids, p=0.2, strategy="80-10-10", seed=0, mask_id=None, step=None):
    mask_id = resolve_mask_token(tok, "_").id if mask_id is None else mask_id
    c = MntpCollator(tok, mask_id, p, strategy, seed)
    return c([{"input_ids": row.tolist()} for row in ids], step=step), mask_id


# --------------------------------------------------------------------------- the shift


def test_targets_are_the_previous_positions():
    labels = torch.tensor([[-100, 5, -100, 7],
                           [-100, -100, 9, -100]])
    b, pos, target = mntp_targets(labels)
    assert b.tolist() == [0, 0, 1]
    assert pos.tolist() == [0, 2, 1]  # masked at 1, 3 and 2: predicted from 0, 2 and 1
    assert target.tolist() == [5, 7, 9]


def test_label_at_position_zero_is_ignored():
    b, pos, target = mntp_targets(torch.tensor([[4, -100, 6]]))
    assert pos.tolist() == [1] and target.tolist() == [6]


def causal_lm_loss(logits, labels):
    V = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, V).float(), labels[:, 1:].reshape(-1),
                           ignore_index=-100)


@pytest.mark.parametrize("arch,impl", [("llama", "sdpa"), ("gemma2", "eager")])
def test_loss_is_the_shifted_causal_lm_loss_on_masked_tokens(arch, impl):
    model, tok = make_tiny_model(arch, attn_implementation=impl)
    if arch == "gemma2":
        model.config.final_logit_softcapping = 0.05  # strong capping: a missed cap would show
    ids = ordinary_batch(tok, (3, 24))
    batch, _ = collate(tok, ids, p=0.3)
    assert (batch["labels"] != -100).sum() > 5
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    output_hidden_states=True)
        loss = mntp_loss(out.hidden_states[-1], batch["labels"], model.lm_head,
                         softcap=logit_softcap(model.config))
    assert loss.dtype == torch.float32
    assert torch.allclose(loss, causal_lm_loss(out.logits, batch["labels"]), atol=1e-6)
    if arch == "gemma2":
        uncapped = mntp_loss(out.hidden_states[-1], batch["labels"], model.lm_head)
        assert not torch.allclose(uncapped, loss, atol=1e-3)


def test_loss_through_a_peft_wrapped_lm_head():
    from peft import LoraConfig, get_peft_model

    model, tok = make_tiny_model("llama")
    model = get_peft_model(model, LoraConfig(r=2, target_modules=["lm_head", "q_proj"]))
    head = model.get_output_embeddings()
    torch.nn.init.normal_(head.lora_B["default"].weight)  # a nonzero adapter must be applied
    batch, _ = collate(tok, ordinary_batch(tok, (2, 16)), p=0.4)
    out = model(input_ids=batch["input_ids"], output_hidden_states=True)
    loss = mntp_loss(out.hidden_states[-1], batch["labels"], head)
    assert torch.allclose(loss, causal_lm_loss(out.logits, batch["labels"]), atol=1e-6)
    loss.backward()
    assert head.lora_A["default"].weight.grad is not None


def test_no_masked_token_gives_zero_loss_with_gradients():
    hidden = torch.randn(2, 8, 16, requires_grad=True)
    head = torch.nn.Linear(16, 50)
    loss = mntp_loss(hidden, torch.full((2, 8), -100), head)
    assert loss.item() == 0.0
    loss.backward()  # still connected to model and head: every DDP rank runs the same backward
    assert hidden.grad is not None and head.weight.grad is not None


# --------------------------------------------------------------------------- masking


def test_mask_probability_matches_the_target(tok):
    batch, _ = collate(tok, ordinary_batch(tok, (64, 512)), p=0.2)
    frac = (batch["labels"][:, 1:] != -100).float().mean().item()  # position 0 is never eligible
    assert abs(frac - 0.2) < 0.01


def test_position_zero_and_special_tokens_are_never_masked(tok):
    ids = ordinary_batch(tok, (16, 40))
    ids[:, 0] = tok.bos_token_id
    ids[:, 10] = tok.eos_token_id
    ids[:, 11] = tok.bos_token_id
    ids[:, 20] = tok.pad_token_id
    ids[:, 21] = tok.unk_token_id
    ids[:, 1] = 100  # an ordinary token in position 0 would be excluded just the same:
    batch, _ = collate(tok, ids[:, 1:], p=0.99)  # ...here it is at position 0 of the batch
    batch0, _ = collate(tok, ids, p=0.99)
    for b, start in ((batch, 1), (batch0, 0)):
        special_cols = [c - start for c in (0, 10, 11, 20, 21) if c - start >= 0]
        protected = [0] + special_cols
        assert (b["labels"][:, protected] == -100).all()
        src = ids[:, start:]
        assert torch.equal(b["input_ids"][:, protected], src[:, protected])
        assert (b["labels"] != -100).float().mean() > 0.8  # everything else nearly all masked


def test_80_10_10_split(tok):
    ids = ordinary_batch(tok, (64, 512))
    batch, mask_id = collate(tok, ids, p=0.5)
    chosen = batch["labels"] != -100
    got, orig = batch["input_ids"][chosen], ids[chosen]
    n = chosen.sum().item()
    as_mask = (got == mask_id) & (orig != mask_id)
    kept = got == orig
    random = ~kept & ~as_mask
    assert abs(as_mask.sum().item() / n - 0.8) < 0.01
    assert abs(random.sum().item() / n - 0.1) < 0.01
    assert abs(kept.sum().item() / n - 0.1) < 0.01
    specials = torch.tensor(tok.all_special_ids + [mask_id])
    assert not torch.isin(got[random], specials).any()  # random tokens are ordinary tokens
    assert torch.equal(batch["labels"][chosen], orig)  # labels are the original ids, unshifted
    assert torch.equal(batch["input_ids"][~chosen], ids[~chosen])


def test_all_strategy_masks_every_chosen_token(tok):
    ids = ordinary_batch(tok, (8, 128))
    batch, mask_id = collate(tok, ids, p=0.3, strategy="all")
    chosen = batch["labels"] != -100
    assert (batch["input_ids"][chosen] == mask_id).all()
    assert torch.equal(batch["input_ids"][~chosen], ids[~chosen])


def test_variable_lengths_are_padded_right_and_never_masked(tok):
    mask_id = resolve_mask_token(tok, "_").id
    c = MntpCollator(tok, mask_id, 0.99, "all", seed=0)
    batch = c([{"input_ids": [1, 50, 51, 52, 53]}, {"input_ids": [1, 60]}])
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert batch["input_ids"][1, 2:].tolist() == [tok.pad_token_id] * 3
    assert (batch["labels"][1, 2:] == -100).all()
    assert batch["labels"][0, 1:].tolist() == [50, 51, 52, 53]


def test_masking_is_a_function_of_seed_and_step(tok):
    mask_id = resolve_mask_token(tok, "_").id
    examples = [{"input_ids": r.tolist()} for r in ordinary_batch(tok, (4, 64))]
    a = MntpCollator(tok, mask_id, 0.3, seed=7)
    first, second, third = a(examples), a(examples), a(examples)  # steps 0, 1, 2
    assert not torch.equal(first["labels"], second["labels"])  # fresh masks every step
    resumed = MntpCollator(tok, mask_id, 0.3, seed=7)
    resumed.step = 2  # exact resume: the trainer sets the step
    assert torch.equal(resumed(examples)["input_ids"], third["input_ids"])
    assert resumed.step == 3
    assert torch.equal(MntpCollator(tok, mask_id, 0.3, seed=7)(examples, step=1)["labels"],
                       second["labels"])
    other_seed = MntpCollator(tok, mask_id, 0.3, seed=8)(examples, step=0)
    assert not torch.equal(other_seed["labels"], first["labels"])


def test_rows_carry_their_index_and_masks_follow_it(tok):
    """The index the masks are seeded from comes with each row on read (no stored column), so a
    batch's masks depend on its rows only: the same batch is masked alike in a resumed run."""
    import datasets
    from torch.utils.data import DataLoader

    from l2v_cli.stages.mntp import IndexedRows, RowSeededMasking

    blocks = datasets.Dataset.from_dict({"input_ids": ordinary_batch(tok, (10, 16)).tolist()})
    rows = IndexedRows(blocks)
    assert len(rows) == 10 and rows[3] == {"input_ids": blocks[3]["input_ids"], "idx": 3}
    assert blocks.column_names == ["input_ids"]
    collator = RowSeededMasking(MntpCollator(tok, resolve_mask_token(tok, "_").id, 0.3, seed=7))
    batch = next(iter(DataLoader(rows, batch_size=3, sampler=[7, 2, 9], collate_fn=collator)))
    assert batch["idx"].tolist() == [7, 2, 9]
    again = collator([rows[i] for i in (7, 2, 9)])
    assert torch.equal(batch["input_ids"], again["input_ids"]) and torch.equal(batch["labels"], again["labels"])


def test_unknown_strategy_is_an_error(tok):
    with pytest.raises(L2VError, match="mntp.mask_strategy"):
        MntpCollator(tok, 66, 0.2, "bert")


# --------------------------------------------------------------------------- the mask token


def fresh_tok():
    from transformers import AutoTokenizer

    from l2v_cli.modeling.tiny import tokenizer_dir

    return AutoTokenizer.from_pretrained(tokenizer_dir())


def test_underscore_is_the_existing_token():
    tok = fresh_tok()
    n = len(tok)
    choice = resolve_mask_token(tok, "_")
    assert choice.tokenizer is tok and not choice.added and len(tok) == n
    assert tok.convert_ids_to_tokens(choice.id) == "_"


def test_auto_starts_with_the_family_token():
    tok = fresh_tok()
    assert resolve_mask_token(tok, "auto").id == resolve_mask_token(tok, "_").id
    assert resolve_mask_token(tok, "auto").how == "the family's token '_'"
    at = resolve_mask_token(tok, "auto", family_token="@")
    assert at.id == tok.convert_tokens_to_ids("@") and at.how == "the family's token '@'"


def _without(tok, *pieces):
    """The tiny tokenizer with `pieces` unreachable (renamed in the vocabulary, merges dropped)."""
    import json

    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer

    d = json.loads(tok.backend_tokenizer.to_str())
    for p in pieces:
        d["model"]["vocab"][f"<gone:{p}>"] = d["model"]["vocab"].pop(p)
    split = (lambda m: m.split(" ")) if isinstance(d["model"]["merges"][0], str) else (lambda m: m)
    d["model"]["merges"] = [m for m in d["model"]["merges"] if not any(p in x for x in split(m) for p in pieces)]
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(d)), bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>", pad_token="<pad>")


def test_auto_falls_back_in_the_stated_order():
    """family token -> the tokenizer's mask token -> '_' -> an unused special token -> EOS -> new <mask>;
    it never refuses, and says which it chose and why."""
    tok = _without(fresh_tok(), "@")  # the family token "@" is not one token any more
    c = resolve_mask_token(tok, "auto", family_token="@")
    assert tok.convert_ids_to_tokens(c.id) == "_" and c.how.startswith("'_' (auto: the family's token '@' is not")
    tok.add_special_tokens({"mask_token": "[MASK]"})
    c = resolve_mask_token(tok, "auto", family_token="@")
    assert c.id == tok.mask_token_id and c.how.startswith("the tokenizer's mask token '[MASK]'")

    tok = _without(fresh_tok(), "_")
    tok.add_special_tokens({"additional_special_tokens": ["<|reserved_special_token_0|>"]})
    c = resolve_mask_token(tok, "auto")
    assert tok.convert_ids_to_tokens(c.id) == "<|reserved_special_token_0|>" and not c.added
    assert "unused special token" in c.how

    tok = _without(fresh_tok(), "_")
    c = resolve_mask_token(tok, "auto")
    assert c.id == tok.eos_token_id and c.how.startswith("EOS '</s>' (auto: the family's token '_' is not one token")
    with pytest.raises(L2VError, match=r"mask token '_' is not a single token.*\['<unk>'\].*use auto"):
        resolve_mask_token(tok, "_")  # an explicit choice keeps its clear error

    tok = _without(fresh_tok(), "_")
    tok.eos_token = None
    c = resolve_mask_token(tok, "auto")
    assert c.added and tok.mask_token == "<mask>" and c.id == tok.mask_token_id


def test_eos():
    tok = fresh_tok()
    c = resolve_mask_token(tok, "eos")
    assert (c.tokenizer, c.id, c.added) == (tok, tok.eos_token_id, False)


def test_mask_adds_a_special_token():
    tok = fresh_tok()
    n = len(tok)
    c = resolve_mask_token(tok, "mask")
    assert c.added and len(tok) == n + 1 and c.id == n
    assert tok.mask_token == "<mask>" and c.id in tok.all_special_ids
    again = resolve_mask_token(tok, "mask")  # a second call reuses it
    assert (again.id, again.added) == (c.id, False)


def test_single_token_literal():
    tok = fresh_tok()
    tid = tok.encode("e", add_special_tokens=False)
    c = resolve_mask_token(tok, "e")
    assert (c.id, c.added) == (tid[0], False)


def test_multi_token_literal_is_an_error():
    with pytest.raises(L2VError, match=r"not a single token.*key mntp\.mask_token"):
        resolve_mask_token(fresh_tok(), "hello world")
