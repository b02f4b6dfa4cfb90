"""Run by tests/test_parallel_tensor_parallel.py on 2 ranks (``python -m oneflow.distributed.launch``): applies
tensor parallelism (``dist.tensor_parallel=2``) to the tiny model and writes the SBP every parameter and
buffer ends up with, and the gather SBP of every block, to ``OUT/rank{r}.json``.

    python -m oneflow.distributed.launch --nproc_per_node 2 tests/tp_plan_job.py OUT
"""
import json
import os
import sys

import oneflow_posmlp  # noqa: F401  (before oneflow)
import oneflow as flow  # noqa: F401

from conftest import TINY_MODEL_CFG
from oneflow_posmlp.models import build_model
from oneflow_posmlp.parallel import ParallelContext

out = sys.argv[1]
ctx = ParallelContext({"device": "cpu", "data_parallel": 0, "tensor_parallel": 2, "pipeline_parallel": 1})
model = ctx.apply(build_model(dict(TINY_MODEL_CFG, num_classes=4)))


def names(sbp):
    return [str(s) for s in (sbp if isinstance(sbp, (tuple, list)) else (sbp,))]


result = {
    "rank": ctx.rank,
    "parameters": {n: names(p.sbp) for n, p in model.named_parameters()},
    "buffers": {n: names(b.sbp) for n, b in model.named_buffers()},
    "gather": {n: names(m.gate_sbp) for n, m in model.named_modules() if getattr(m, "gate_sbp", None)},
}
with open(os.path.join(out, f"rank{ctx.rank}.json"), "w") as f:
    json.dump(result, f)
