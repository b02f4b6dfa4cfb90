"""A launched job for tests/test_cpu_kernels_gelu.py: the NumPy GELU on a global tensor split over 2 ranks
(forward and backward) against OneFlow's gelu; each rank writes its largest differences to OUT/rank{r}.json."""
import json
import sys

import oneflow_posmlp  # noqa: F401  (before oneflow)
import oneflow as flow

from oneflow_posmlp.cpu_kernels.gelu import gelu, uses_numpy_path

out = sys.argv[1]
P = flow.placement("cpu", ranks=[0, 1])
flow.manual_seed(0)
whole = flow.randn(4, 1 << 17).to_global(placement=P, sbp=flow.sbp.broadcast)
a = whole.to_global(sbp=flow.sbp.split(0)).detach().requires_grad_()
b = whole.to_global(sbp=flow.sbp.split(0)).detach().requires_grad_()
ya, yb = flow.nn.functional.gelu(a), gelu(b)
(ya * ya).sum().backward()
(yb * yb).sum().backward()
res = {"numpy_path": uses_numpy_path(b), "sbp": str(yb.sbp),
       "forward": float((ya - yb).abs().max().numpy()), "backward": float((a.grad - b.grad).abs().max().numpy())}
with open(f"{out}/rank{flow.env.get_rank()}.json", "w") as f:
    json.dump(res, f)
