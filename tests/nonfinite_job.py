"""Run by tests/test_engine_stop.py on 2 ranks (``python -m oneflow.distributed.launch``): the demo with
``train.nonfinite=skip`` where only rank 1's shard of the second update is NaN, eagerly and as a graph; writes
what each rank saw to ``OUT/rank{r}.json``.

    python -m oneflow.distributed.launch --nproc_per_node 2 tests/nonfinite_job.py DATA_ROOT OUT
"""
import json
import os
import sys

import oneflow_posmlp  # noqa: F401  (before oneflow)
import oneflow as flow

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import tiny_train_opts  # noqa: E402
from test_engine_stop import _poisoned  # noqa: E402
from test_parallel_layouts import TWO_LEVELS  # noqa: E402

from oneflow_posmlp.config import load_config  # noqa: E402
from oneflow_posmlp.engine import Trainer  # noqa: E402

root, out = sys.argv[1], sys.argv[2]
rank = flow.env.get_rank()
result = {}
for mode, extra in (("eager", ()), ("graph", TWO_LEVELS)):
    opts = {"train.epochs": 1, "data.limit_train_batches": 0, "train.ema": "true", "train.nonfinite": "skip",
            "train.graph": str(mode == "graph").lower()}
    trainer = Trainer(load_config("configs/demo.yaml", [*tiny_train_opts(root, **opts), *extra]),
                      output_dir=os.path.join(out, mode))
    if rank == 1:
        trainer.train_loader = _poisoned(trainer.train_loader, {1})
    trainer.fit()
    log = open(os.path.join(out, mode, f"log_rank{rank}.txt")).read().splitlines()
    result[mode] = {"updates": trainer.updates, "skips": trainer.nonfinite_skips,
                    "skipped": [line.split("] ", 1)[1] for line in log if "skipped:" in line],
                    "agree": [line.split("] ", 1)[1] for line in log if "replicas agree" in line]}
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump(result, f)
