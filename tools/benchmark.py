"""Benchmark a PosMLP on synthetic data (throughput, compile time, memory, FLOPs; --profile: time by module kind).

    python tools/benchmark.py --model posmlp_t --batch-size 8 [--steps 5 --warmup 1] [--profile] [--json out.json]
    python tools/benchmark.py --config configs/demo.yaml --batch-size 32 --modes train-eager,train-graph
    python tools/benchmark.py --model posmlp_t --batch-size 8 --ranks 2     # data parallel, same global batch

The command line is oneflow_posmlp/bench/cli.py (``--help`` lists every option); docs/benchmark.md.
"""
import sys

try:  # first: re-run under .venv/bin/python when this Python lacks OneFlow (tools/_python.py)
    import _python  # noqa: F401
except ImportError:  # loaded from elsewhere (runpy, importlib): that Python runs the package already
    pass
import oneflow_posmlp  # noqa: F401  (before oneflow: makes the CUDA libraries loadable)
from oneflow_posmlp.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
