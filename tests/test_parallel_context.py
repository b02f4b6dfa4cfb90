"""Data parallelism through global tensors: 2 ranks (python -m oneflow.distributed.launch) against 1 rank.

With LayerNorm everywhere the 2-rank run equals the 1-rank run, drop path on: the same loss and gradient norm at
each of 3 updates, and final weights within 1e-6 (the drop-path masks of each sample of the global batch are
the ones one process draws, models/drop.py). BatchNorm, like DDP without SyncBN (the official
setting), normalises each rank's shard with its own statistics, so with BN the runs differ by design; the
running statistics are then averaged over the ranks after each epoch (timm's dist_bn "reduce").
The two 2-rank runs are launched together (``launch.run_many``).
"""
import os
import re

import pytest

from launch import max_state_diff, run_many, train, train_argv, updates
from oneflow_posmlp.parallel import LayoutError, ParallelContext

pytestmark = pytest.mark.distributed


DROP_PATH_LN = ("model.stem_norm=LN", "model.drop_path_rate=0.2")


@pytest.fixture(scope="module")
def two_ranks(tiny_demo_root, tmp_path_factory):
    """Both 2-rank runs in one launch: ``{"two": ..., "bn": ...}`` -> (output directory, per-rank results)."""
    base = tmp_path_factory.mktemp("data_parallel")
    names = {"two": DROP_PATH_LN, "bn": ()}  # bn: the demo model as it is, with its BatchNorm stem
    results, job = run_many(2, [{"tool": "train.py", "argv": train_argv(tiny_demo_root, base / name, *opts)}
                                for name, opts in names.items()], base / "job")
    return {name: (base / name, res, job) for name, res in zip(names, results)}


def finished(run):
    out, results, job = run
    assert results is not None, job
    for res in results:
        assert res["code"] == 0, res["stderr"][-3000:]
    return out


def test_two_rank_data_parallel_equals_one_rank(two_ranks, tiny_demo_root, tmp_path):
    train(tiny_demo_root, tmp_path / "one", 1, *DROP_PATH_LN)
    two = finished(two_ranks["two"])
    one, two_updates = updates(tmp_path / "one"), updates(two)
    assert len(one) == 3 and one == two_updates  # loss and grad norm, as logged (4 decimals), at every update
    assert max_state_diff(tmp_path / "one" / "last", two / "last") <= 1e-6
    assert "on 2 rank(s)" in open(two / "log_rank0.txt").read()
    assert os.path.isfile(two / "log_rank1.txt")  # every rank logs to its own file
    assert "replicas agree within 0\n" in open(two / "log_rank0.txt").read()


def test_batchnorm_statistics_are_averaged_over_ranks(two_ranks):
    out = finished(two_ranks["bn"])
    sums = [re.findall(r"buffers averaged over 2 ranks \(checksum ([\d.]+)\)",
                       open(out / f"log_rank{r}.txt").read()) for r in (0, 1)]
    assert sums[0] and sums[0] == sums[1]


def test_layout_that_does_not_match_the_world_is_refused():
    with pytest.raises(LayoutError, match="= 2 ranks, but 1 were launched"):
        ParallelContext({"device": "cpu", "data_parallel": 2, "tensor_parallel": 1, "pipeline_parallel": 1})
    with pytest.raises(LayoutError, match="no CUDA device"):
        ParallelContext({"device": "cuda", "data_parallel": 0, "tensor_parallel": 1, "pipeline_parallel": 1})
