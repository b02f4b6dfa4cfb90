"""Run by tests/test_models_drop.py on 1, 2 or 4 ranks (``python -m oneflow.distributed.launch``): draws the
random masks of ``models/drop.py`` on global tensors, eagerly and inside an ``nn.Graph``, and writes what each
rank holds to ``OUT/rank{r}.json`` for the test to compare.

    python tests/drop_masks_job.py OUT   (2-D [dp, tp] placement on 4 ranks, 1-D split(0) otherwise)
"""
import json
import os
import sys

import oneflow_posmlp  # noqa: F401  (before oneflow)
import oneflow as flow

from oneflow_posmlp.models.drop import DropPath, dropout, sample_keep
from oneflow_posmlp.parallel import ParallelContext

out = sys.argv[1]
world, rank = flow.env.get_world_size(), flow.env.get_rank()
tp = 2 if world == 4 else 1
ctx = ParallelContext({"device": "cpu", "data_parallel": 0, "tensor_parallel": tp, "pipeline_parallel": 1})
B, D = 16, 64
result = {"rank": rank, "data_rank": ctx.data_rank, "tp_rank": ctx.tp_rank}


def batch(x):
    """A complete local tensor -> global, split(0) over data-parallel ranks, broadcast over tensor-parallel (on
    one process a global tensor on rank 0, to compare its draws with the layouts')."""
    if not ctx.distributed:
        return x.to_global(placement=flow.placement("cpu", ranks=[0]), sbp=flow.sbp.broadcast)
    return x.to_global(placement=ctx.placement, sbp=ctx.sbp(flow.sbp.broadcast, flow.sbp.broadcast)).to_global(
        sbp=ctx.sbp(flow.sbp.split(0), flow.sbp.broadcast))


def local(t):
    return (t.to_local() if t.is_global else t).numpy().tolist()


ones = batch(flow.ones(B, D))
flow.manual_seed(3)
result["sample_keep"] = local(sample_keep(ones, 0.5))
flow.manual_seed(3)
result["dropout"] = local(dropout(ones, 0.5))
flow.manual_seed(3)
result["oneflow_dropout"] = local(flow.nn.functional.dropout(ones, p=0.5, training=True))


class Masks(flow.nn.Graph):
    """Dropout and a drop path (drawing its own mask) inside a graph."""

    def __init__(self):
        super().__init__()
        self.drop_path = DropPath(0.5)

    def build(self, x):
        return dropout(x, 0.5), self.drop_path(x)


flow.manual_seed(3)
graph_dropout, graph_drop_path = Masks()(ones)
result["graph_dropout"], result["graph_drop_path"] = local(graph_dropout), local(graph_drop_path)

if ctx.distributed:  # the replica check sees a rank whose copy of a replicated weight went its own way
    lin = flow.nn.Linear(4, 4).to_global(placement=ctx.placement, sbp=ctx.sbp(flow.sbp.broadcast, flow.sbp.broadcast))
    result["divergence_equal"] = ctx.replica_divergence(lin)
    if rank == world - 1:
        lin.weight.to_local().add_(1.0)
    result["divergence_changed"] = ctx.replica_divergence(lin)

with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump(result, f)
