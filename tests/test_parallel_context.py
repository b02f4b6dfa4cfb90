"""Data parallelism through global tensors: 2 ranks (python -m oneflow.distributed.launch) against 1 rank.

With LayerNorm everywhere the 2-rank run equals the 1-rank run, drop path on: the same loss and gradient norm at
each of 3 updates, and final weights within 1e-6 (the drop-path masks of each sample of the global batch are
the ones one process draws, models/drop.py). BatchNorm, like DDP without SyncBN (the official
setting), normalises each rank's shard with its own statistics, so with BN the runs differ by design; the
running statistics are then averaged over the ranks after each epoch (timm's dist_bn "reduce").
"""
import os
import re

import pytest

from launch import max_state_diff, train, updates
from oneflow_posmlp.parallel import LayoutError, ParallelContext

pytestmark = pytest.mark.distributed


def test_two_rank_data_parallel_equals_one_rank(tiny_demo_root, tmp_path):
    train(tiny_demo_root, tmp_path / "one", 1, "model.stem_norm=LN", "model.drop_path_rate=0.2")
    train(tiny_demo_root, tmp_path / "two", 2, "model.stem_norm=LN", "model.drop_path_rate=0.2")
    one, two = updates(tmp_path / "one"), updates(tmp_path / "two")
    assert len(one) == 3 and one == two  # loss and grad norm, as logged (4 decimals), at every update
    assert max_state_diff(tmp_path / "one" / "last", tmp_path / "two" / "last") <= 1e-6
    assert "on 2 rank(s)" in open(tmp_path / "two" / "log_rank0.txt").read()
    assert os.path.isfile(tmp_path / "two" / "log_rank1.txt")  # every rank logs to its own file
    assert "replicas agree within 0\n" in open(tmp_path / "two" / "log_rank0.txt").read()


def test_batchnorm_statistics_are_averaged_over_ranks(tiny_demo_root, tmp_path):
    train(tiny_demo_root, tmp_path, 2)  # the demo model has a BatchNorm stem
    sums = [re.findall(r"buffers averaged over 2 ranks \(checksum ([\d.]+)\)",
                       open(tmp_path / f"log_rank{r}.txt").read()) for r in (0, 1)]
    assert sums[0] and sums[0] == sums[1]


def test_layout_that_does_not_match_the_world_is_refused():
    with pytest.raises(LayoutError, match="= 2 ranks, but 1 were launched"):
        ParallelContext({"device": "cpu", "data_parallel": 2, "tensor_parallel": 1, "pipeline_parallel": 1})
    with pytest.raises(LayoutError, match="no CUDA device"):
        ParallelContext({"device": "cuda", "data_parallel": 0, "tensor_parallel": 1, "pipeline_parallel": 1})
