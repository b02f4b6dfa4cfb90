"""Run by tests/test_parallel_tensor_parallel.py on 2 ranks (``python -m oneflow.distributed.launch``): applies
tensor parallelism (``dist.tensor_parallel=2``, each ``dist.tensor_parallel_mode``) to the tiny model and writes,
per mode, to ``OUT/rank{r}_{mode}.json``: the SBP every parameter and buffer ends up with, the gather SBP and the
gating-unit degree of every block, this rank's FLOPs per image (and one process's), which parameters' local parts are the rows/columns the plan gives this rank
(the official tensor, in the plan's stored order, split by its SBP), which are stored permuted, and how far the
gathered state dict (what a checkpoint holds) is from the official one.

    python -m oneflow.distributed.launch --nproc_per_node 2 tests/tp_plan_job.py OUT
"""
import copy
import json
import os
import sys

import oneflow_posmlp  # noqa: F401  (before oneflow)
import oneflow as flow
import numpy as np

from conftest import TINY_MODEL_CFG
from oneflow_posmlp.models import build_model
from oneflow_posmlp.models.flops import count_flops
from oneflow_posmlp.parallel import ParallelContext
from oneflow_posmlp.parallel.tensor_parallel import tensor_parallel_plan

out = sys.argv[1]


def names(sbp):
    return [str(s) for s in (sbp if isinstance(sbp, (tuple, list)) else (sbp,))]


for mode in ("gather", "groups"):
    flow.manual_seed(0)
    official = build_model(dict(TINY_MODEL_CFG, num_classes=4))
    model = copy.deepcopy(official)
    orders = tensor_parallel_plan(official, mode, 2).orders
    ctx = ParallelContext({"device": "cpu", "data_parallel": 0, "tensor_parallel": 2, "pipeline_parallel": 1,
                           "tensor_parallel_mode": mode})
    ctx.apply(model)
    want = dict(official.named_parameters())
    planned = []
    for name, p in model.named_parameters():
        full = want[name].detach().numpy()
        if name in orders:
            axis, order = orders[name]
            full = np.take(full, order, axis=axis)
        local = p.to_local().numpy()
        if p.sbp[0] != flow.sbp.broadcast:
            axis = next(k for k in range(p.ndim) if p.sbp[0] == flow.sbp.split(k))
            full = np.split(full, 2, axis=axis)[ctx.rank]
        if local.shape == full.shape and np.array_equal(local, full):
            planned.append(name)
    flops = count_flops(model, ctx=ctx)[1]  # this rank's share, one image
    gathered = ctx.gather(model.state_dict())
    diff = max(float(np.abs(v.numpy() - official.state_dict()[k].numpy()).max()) for k, v in gathered.items())
    ids = {id(p): n for n, p in model.named_parameters()}
    result = {
        "rank": ctx.rank,
        "parameters": {n: names(p.sbp) for n, p in model.named_parameters()},
        "buffers": {n: names(b.sbp) for n, b in model.named_buffers()},
        "gather": {n: names(m.gate_sbp) for n, m in model.named_modules() if getattr(m, "gate_sbp", None)},
        "parts": {n: m.gate_parts for n, m in model.named_modules() if getattr(m, "gate_parts", 1) > 1},
        "local_parts_as_planned": sorted(planned),
        "gathered_max_diff": diff,
        "stored_permuted": sorted(ids[i] for i in ctx._stored_orders if i in ids),
        "flops_per_rank": flops,
        "flops_one_process": count_flops(official)[1],
    }
    with open(os.path.join(out, f"rank{ctx.rank}_{mode}.json"), "w") as f:
        json.dump(result, f)
