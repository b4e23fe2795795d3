"""Spec: the training order is a seeded shuffle of every row, new each epoch, in constant memory;
ranks share it out and a resumed run continues it exactly."""

import collections
import tracemalloc
from types import SimpleNamespace

import pytest
import torch
from accelerate.data_loader import prepare_data_loader, skip_first_batches
from torch.utils.data import DataLoader

from l2v_cli.training.shuffle import Permutation, ShuffleSampler
from l2v_cli.training.spine import ShuffleEpoch


def order(n, seed=0, epoch=0):
    s = ShuffleSampler(n, seed)
    s.set_epoch(epoch)
    return list(s)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 8, 64, 97, 1000, 1024, 4099])
def test_every_index_exactly_once(n):
    assert sorted(order(n)) == list(range(n))
    assert len(ShuffleSampler(n, 0)) == n


def test_same_seed_and_epoch_same_order_else_a_different_one():
    assert order(500, seed=1, epoch=2) == order(500, seed=1, epoch=2)
    assert order(500, seed=1) != order(500, seed=2)
    assert order(500, seed=1, epoch=0) != order(500, seed=1, epoch=1)
    assert order(500) != list(range(500))


def test_iterating_again_without_set_epoch_replays_the_order():
    """The sampler never moves its own epoch on: the trainer says which epoch it is."""
    s = ShuffleSampler(100, 3)
    assert list(s) == list(s)


def test_no_row_is_favoured_for_any_position():
    """Over many seeds, each of 8 rows comes first about equally often (1,000 expected each)."""
    firsts = collections.Counter(Permutation(8, seed)[0] for seed in range(8000))
    assert set(firsts) == set(range(8)) and all(800 < c < 1200 for c in firsts.values()), firsts


def test_permutation_is_an_indexable_bijection():
    p = Permutation(10, seed=5, epoch=1)
    assert [p[i] for i in range(10)] == list(p)
    with pytest.raises(IndexError):
        p[10]


BOUND = 64 * 1024  # bytes


def peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_number_of_rows():
    """The first 1,000 positions of a 10^8-row order cost a few KB; the list HF's RandomSampler
    builds for only 10^5 rows already exceeds that bound (the control)."""
    def first_1000():
        it = iter(ShuffleSampler(10**8, 0))
        for _ in range(1000):
            next(it)

    assert peak_bytes(first_1000) < BOUND
    assert peak_bytes(lambda: torch.randperm(10**5).tolist()) > BOUND


def batches(loader):
    return [b.tolist() for b in loader]


def loader(n=103, batch=4, epoch=0):
    s = ShuffleSampler(n, seed=7)
    s.set_epoch(epoch)
    return DataLoader(list(range(n)), batch_size=batch, sampler=s, drop_last=True), s


@pytest.mark.parametrize("epoch", [0, 1])
def test_resume_mid_epoch_gives_the_same_remaining_order(epoch):
    full, _ = loader(epoch=epoch)
    expected = batches(full)
    fresh, s = loader(epoch=0)  # a new process: the sampler starts at epoch 0 ...
    ShuffleEpoch(SimpleNamespace(shuffle=s)).on_epoch_begin(None, SimpleNamespace(epoch=epoch + 0.4), None)
    assert batches(skip_first_batches(fresh, 9)) == expected[9:]  # ... and the trainer sets it


@pytest.mark.parametrize("skip", [0, 5])
def test_two_ranks_share_one_order_out_disjointly(skip):
    """Each rank computes the same order; accelerate deals its batches out in turn (also after a
    resume's skip). The calls are the Trainer's: our epoch callback, then skip, then set_epoch."""
    expected = batches(loader(epoch=1)[0])
    ranks = []
    for r in range(2):
        plain, s = loader(epoch=0)
        shard = prepare_data_loader(plain, num_processes=2, process_index=r, put_on_device=False)
        ShuffleEpoch(SimpleNamespace(shuffle=s)).on_epoch_begin(None, SimpleNamespace(epoch=1.0), None)
        shard = skip_first_batches(shard, skip) if skip else shard
        shard.set_epoch(1)
        ranks.append(batches(shard))
    assert [b for pair in zip(*ranks) for b in pair] == expected[2 * skip:2 * (len(expected) // 2)]
    assert not {i for b in ranks[0] for i in b} & {i for b in ranks[1] for i in b}


def test_the_trainer_draws_its_random_order_from_the_shuffle_sampler(tmp_path):
    from l2v_cli.config import load_recipe
    from l2v_cli.training.spine import L2VTrainer, build_training_args

    train = load_recipe("smoke", ["mntp.train.seed=5"]).mntp.train
    t = L2VTrainer(model=torch.nn.Linear(2, 2), args=build_training_args(train, tmp_path, bf16=False),
                   train_dataset=list(range(10)), stage_config={})
    s = t.get_train_dataloader().batch_sampler.sampler
    assert isinstance(s, ShuffleSampler) and t.shuffle is s and (len(s), s.seed) == (10, 5)
