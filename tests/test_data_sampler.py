"""The resumable distributed sampler."""
import pytest

from oneflow_posmlp.data import ResumableDistributedSampler, local_batch_size
from oneflow_posmlp.config import load_config


def test_ranks_get_disjoint_equal_shards():
    shards = [list(ResumableDistributedSampler(103, r, 4, batch_size=5, seed=1)) for r in range(4)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == 103 // 20 * 5
    flat = [i for s in shards for i in s]
    assert len(flat) == len(set(flat))


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
