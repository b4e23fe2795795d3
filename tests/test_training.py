"""Spec: the three training stages on one spine — learning, checkpoints, exact resume, refusals."""

import json

import pytest
import torch
from safetensors.torch import load_file

from l2v_cli.config import load_recipe
from l2v_cli.errors import L2VError
from l2v_cli.stages.mntp import train_mntp
from l2v_cli.stages.simcse import train_simcse
from l2v_cli.stages.supervised import train_supervised

FAST = ["mntp.data.max_samples=400", "simcse.data.max_samples=200", "supervised.data.max_samples=64"]


def recipe(*overrides):
    return load_recipe("smoke", [*FAST, *overrides])


def losses(stage_dir):
    rows = [json.loads(line) for line in open(stage_dir / "metrics.jsonl")]
    return [r["loss"] for r in rows if "loss" in r]


def adapter(stage_dir):
    return load_file(str(stage_dir / "adapter" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """One learning run of all three stages. Small data sets that repeat every few steps: a tiny
    random model cannot learn much from fresh text in a few steps, but it can fit what it sees again."""
    root = tmp_path_factory.mktemp("chain")
    r = recipe("mntp.data.max_samples=20", "mntp.train.max_steps=24", "mntp.train.learning_rate=1e-2",
               "mntp.train.save_steps=12",
               "simcse.train.max_steps=16", "simcse.train.per_device_batch_size=16",
               "simcse.train.learning_rate=2e-3", "simcse.attention_dropout=0.5",
               "supervised.data.max_samples=4", "supervised.train.max_steps=16",
               "supervised.train.learning_rate=1e-3")
    mntp = train_mntp(r, "tiny-llama", root / "mntp")
    simcse = train_simcse(r, mntp, root / "simcse")
    sup = train_supervised(r, simcse, root / "sup")
    return mntp, simcse, sup


def test_each_stage_loss_goes_down(chain):
    for stage_dir in chain:
        ls = losses(stage_dir)
        assert len(ls) >= 16
        first, last = sum(ls[:4]) / 4, sum(ls[-4:]) / 4
        assert last < first, (stage_dir.name, ls)


def test_stage_folder_layout_and_chain_record(chain):
    mntp, simcse, sup = chain
    for d in chain:
        for name in ("config.yaml", "metrics.jsonl", "loss.png", "stage.json", "adapter/adapter_config.json"):
            assert (d / name).exists(), f"{d.name}/{name}"
        assert not list(d.glob("checkpoint-*")) and not (d / ".adapter.tmp").exists()
    rec = json.loads((sup / "stage.json").read_text())
    assert rec["stage"] == "train-supervised" and rec["steps"] == 16 and rec["world_size"] == 1
    # The chain to rebuild: the base, then MNTP's and SimCSE's adapters in the order they were applied.
    assert rec["adapters"] == [str(mntp / "adapter"), str(simcse / "adapter")]
    assert set(rec["instructions"]) == {"nq", "squad", "allnli"}


def test_checkpoints_are_named_by_step_and_rotated(chain):
    mntp = chain[0]
    # save_steps=12, save_total_limit=1 (smoke): only the last one is kept, zero-padded.
    assert sorted(p.name for p in mntp.glob("step-*")) == ["step-000024"]
    assert (mntp / "step-000024" / "l2v_checkpoint.json").exists()


def test_resume_continues_exactly_where_it_stopped(tmp_path):
    """An interrupted run resumed from its checkpoint ends with the same weights as one straight run."""
    common = ("mntp.train.lr_scheduler=constant", "mntp.train.save_steps=3", "mntp.train.save_total_limit=3")
    straight = train_mntp(recipe("mntp.train.max_steps=6", *common), "tiny-llama", tmp_path / "a")
    # Interrupted after step 3: its checkpoint exists, the stage never finished.
    b = tmp_path / "b"
    train_mntp(recipe("mntp.train.max_steps=3", *common), "tiny-llama", b)
    (b / "stage.json").unlink()
    resumed = train_mntp(recipe("mntp.train.max_steps=6", *common), "tiny-llama", b, resume=True)
    wa, wb = adapter(straight), adapter(resumed)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0)
    assert losses(straight)[3:] == pytest.approx(losses(resumed)[3:], abs=1e-6)


def test_resume_refuses_a_checkpoint_from_a_different_recipe(tmp_path):
    out = tmp_path / "m"
    train_mntp(recipe("mntp.train.max_steps=2", "mntp.train.save_steps=2"), "tiny-llama", out)
    (out / "stage.json").unlink()
    with pytest.raises(L2VError) as err:
        train_mntp(recipe("mntp.train.max_steps=4", "mntp.lora.r=8"), "tiny-llama", out)
    assert "lora.r: 4 -> 8" in str(err.value) and "--force" in str(err.value)


def test_completed_stage_is_not_silently_overwritten(chain):
    with pytest.raises(L2VError, match="already complete"):
        train_mntp(recipe(), "tiny-llama", chain[0])


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import l2v_cli.data.mntp as mntp_data

    real, calls = mntp_data.mntp_loss, {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(mntp_data, "mntp_loss", flaky)
    out = tmp_path / "m"
    with pytest.raises(L2VError) as err:
        train_mntp(recipe("mntp.train.max_steps=5", "mntp.train.save_steps=2"), "tiny-llama", out)
    msg = str(err.value)
    assert "loss became nan at step 3" in msg and "step-000002" in msg
    assert [p.name for p in out.glob("step-*")] == ["step-000002"]
    assert not (out / "stage.json").exists()


def test_simcse_views_differ_only_by_dropout():
    """SimCSE's positive pair is one batch embedded twice in train mode: with every dropout at 0 the
    two embeddings are identical (nothing else tells the views apart); with the stage's attention
    dropout they differ, yet each sentence stays closest to its own other view."""
    from l2v_cli.encoding.encoder import Encoder
    from l2v_cli.modeling.bidir import set_bidirectional
    from l2v_cli.modeling.tiny import make_tiny_model
    from l2v_cli.stages.contrastive import embed
    from l2v_cli.stages.simcse import SimcseTrainer, TextCollator
    from l2v_cli.training.lora import set_attention_dropout

    model, tok = make_tiny_model("llama")
    set_bidirectional(model, True)
    texts = ["a cat sat on the mat", "stock prices fell sharply", "the rain in spain", "open the door"]
    batch = TextCollator(Encoder(model, tok, pooling="mean"))([{"text": t} for t in texts])
    views = SimcseTrainer.views(None, batch)
    assert len(views) == 2
    model.train()

    def pair(p):
        set_attention_dropout(model, p)
        torch.manual_seed(0)
        return [embed(model, v, "mean") for v in views]

    a, b = pair(0.0)
    assert torch.equal(a, b)  # the same input, so only dropout can make the pair differ
    a, b = pair(0.3)
    assert not torch.allclose(a, b, atol=1e-4)  # attention dropout makes two views
    sim = torch.nn.functional.cosine_similarity(a[:, None], b[None], dim=-1)
    assert (sim.argmax(1) == torch.arange(len(texts))).all()


def test_a_checkpoint_of_an_unfinished_stage_exports_without_naming_its_input(tmp_path):
    """The stage records its input when it starts, so an interrupted run's checkpoint is usable."""
    from l2v_cli.stages.export import export

    out = tmp_path / "m"
    train_mntp(recipe("mntp.train.max_steps=2", "mntp.train.save_steps=2"), "tiny-llama", out)
    (out / "stage.json").unlink()  # as if killed after the checkpoint
    assert json.loads((out / "input.json").read_text())["input"] == "tiny-llama"
    final = export(out / "step-000002", tmp_path / "enc")
    assert (final / "modules.json").exists() and (final / "model.safetensors").exists()


def test_simcse_group_by_length_batches_similar_lengths_and_resumes_exactly(tmp_path):
    """Grouped batches waste less padding than random ones; an interrupted grouped run resumes to
    the same weights as a straight one (the sampler's order survives the restart)."""
    from l2v_cli.data.text import load_texts
    from l2v_cli.modeling.loading import load_tokenizer
    from l2v_cli.modeling.tiny import tokenizer_dir
    from l2v_cli.stages.simcse import with_token_lengths
    from transformers.trainer_pt_utils import LengthGroupedSampler

    r = recipe("simcse.group_by_length=true", "simcse.train.per_device_batch_size=8")
    tok = load_tokenizer(tokenizer_dir())
    ds = with_token_lengths(load_texts(r.simcse.data), tok, r.simcse.max_seq_length)
    lengths = list(ds["length"])
    assert max(lengths) <= r.simcse.max_seq_length

    def waste(order):
        batches = [order[i:i + 8] for i in range(0, len(order) - 7, 8)]
        return sum(max(lengths[j] for j in b) * 8 - sum(lengths[j] for j in b) for b in batches)

    g = torch.Generator().manual_seed(0)
    grouped = list(LengthGroupedSampler(8, lengths=lengths, generator=g))
    shuffled = torch.randperm(len(lengths), generator=g).tolist()
    assert waste(grouped) < 0.5 * waste(shuffled)

    # ... and the stage's trainer really samples that way, from those lengths.
    from transformers import Trainer

    from l2v_cli.modeling.tiny import make_tiny_model
    from l2v_cli.training.spine import build_training_args

    args = build_training_args(r.simcse.train, tmp_path / "t", bf16=False, group_by_length=True)
    sampler = Trainer(model=make_tiny_model("llama")[0], args=args, train_dataset=ds)._get_train_sampler()
    assert isinstance(sampler, LengthGroupedSampler) and sampler.lengths == lengths

    common = ("simcse.train.lr_scheduler=constant", "simcse.train.save_steps=3",
              "simcse.train.save_total_limit=3", "simcse.train.learning_rate=1e-3")
    straight = train_simcse(recipe("simcse.group_by_length=true", "simcse.train.max_steps=6", *common),
                            "tiny-llama", tmp_path / "a")
    b = tmp_path / "b"
    train_simcse(recipe("simcse.group_by_length=true", "simcse.train.max_steps=3", *common), "tiny-llama", b)
    (b / "stage.json").unlink()
    resumed = train_simcse(recipe("simcse.group_by_length=true", "simcse.train.max_steps=6", *common),
                           "tiny-llama", b, resume=True)
    wa, wb = adapter(straight), adapter(resumed)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0)
