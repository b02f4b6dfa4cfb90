"""Micro-benchmark of the group-wise token mixing: batched matmul (the model's) vs flow.einsum
(the official formulation). Forward+backward milliseconds, median of --repeat runs.

    python tools/benchmark_token_mixing.py [--batch 8 --windows 16 --win 14 --channels 192 --gamma 8]

The logic is oneflow_posmlp/bench/token_mixing.py.
"""
import sys

try:  # first: re-run under .venv/bin/python when this Python lacks OneFlow (tools/_python.py)
    import _python  # noqa: F401
except ImportError:  # loaded from elsewhere (runpy, importlib): that Python runs the package already
    pass
import oneflow_posmlp  # noqa: F401  (before oneflow: makes the CUDA libraries loadable)
from oneflow_posmlp._env import prepare_process

prepare_process()  # the CPU settings OneFlow reads when it starts
from oneflow_posmlp.bench.token_mixing import main

if __name__ == "__main__":
    sys.exit(main())
