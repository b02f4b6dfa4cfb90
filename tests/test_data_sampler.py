"""The resumable distributed sampler."""
import pytest

from oneflow_posmlp.data import ResumableDistributedSampler, local_batch_size
from oneflow_posmlp.config import load_config


def test_ranks_get_disjoint_equal_shards():
    shards = [list(ResumableDistributedSampler(103, r, 4, batch_size=5, seed=1)) for r in range(4)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == 103 // 20 * 5
    flat = [i for s in shards for i in s]
    assert len(flat) == len(set(flat))


def test_global_batches_are_one_process_batches_row_for_row():
    """Rank r's local batch k is block r of global batch k: stacked in rank order (split(0)) they are the
    batch one process takes, so per-row draws (drop-path masks) land on the same samples in every layout."""
    one = list(ResumableDistributedSampler(64, 0, 1, batch_size=8, seed=5))
    shards = [list(ResumableDistributedSampler(64, r, 2, batch_size=4, seed=5)) for r in range(2)]
    stacked = [i for k in range(8) for r in range(2) for i in shards[r][4 * k: 4 * k + 4]]
    assert stacked == one


def test_epochs_differ_and_repeat_deterministically():
    s = ResumableDistributedSampler(50, batch_size=5, seed=3)
    e0 = list(s)
    s.set_epoch(1)
    assert list(s) != e0
    s.set_epoch(0)
    assert list(s) == e0


def test_resume_mid_epoch_continues_the_same_order():
    s = ResumableDistributedSampler(40, 1, 2, batch_size=4, seed=9)
    s.set_epoch(2)
    full = list(s)
    r = ResumableDistributedSampler(40, 1, 2, batch_size=4, seed=0)
    r.load_state_dict({"epoch": 2, "consumed": 8, "seed": 9})
    assert list(r) == full[8:]


def test_eval_sampler_keeps_every_index_in_order():
    assert list(ResumableDistributedSampler(10, 0, 1, batch_size=3, shuffle=False, drop_last=False)) == list(range(10))


def test_batch_not_divisible_by_data_parallel_degree():
    cfg = load_config(None, ["train.batch_size=10"])
    with pytest.raises(ValueError, match="not divisible by the 4 data-parallel ranks"):
        local_batch_size(cfg, 4)
    assert local_batch_size(cfg, 2) == 5


def test_orders_of_neighbouring_seeds_and_epochs_differ():
    a = ResumableDistributedSampler(64, batch_size=4, seed=1)  # seed 1 epoch 0 vs seed 0 epoch 1
    b = ResumableDistributedSampler(64, batch_size=4, seed=0)
    b.set_epoch(1)
    assert list(a) != list(b)


def test_len_matches_iteration_for_every_rank():
    for drop_last, shuffle in ((True, True), (False, False)):
        for r in range(3):
            s = ResumableDistributedSampler(23, r, 3, batch_size=2, shuffle=shuffle, drop_last=drop_last)
            assert len(s) == len(list(s))


def test_mid_epoch_resume_with_another_layout_is_refused():
    s = ResumableDistributedSampler(40, 0, 2, batch_size=4, seed=9)
    s.set_epoch(1, consumed=8)
    state = s.state_dict()
    other = ResumableDistributedSampler(40, 0, 4, batch_size=2, seed=9)
    with pytest.raises(ValueError, match="saved with world=2, batch_size=4 but this run has world=4, batch_size=2"):
        other.load_state_dict(state)
    other.load_state_dict(dict(state, consumed=0))  # an epoch boundary is fine
    assert other.epoch == 1 and other.consumed == 0
    with pytest.raises(ValueError, match="outside this rank's shard"):
        s.set_epoch(0, consumed=999)
