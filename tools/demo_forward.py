"""Build a registered PosMLP and run one forward pass: prints parameter count and output shape.

    python tools/demo_forward.py [--model posmlp_t] [--batch 1]
"""
import argparse
import time

try:  # first: re-run under .venv/bin/python when this Python lacks OneFlow (tools/_python.py)
    import _python  # noqa: F401
except ImportError:  # loaded from elsewhere (runpy, importlib): that Python runs the package already
    pass
import oneflow_posmlp  # noqa: F401  (before oneflow: makes the CUDA libraries loadable)
from oneflow_posmlp._env import prepare_process

prepare_process()  # the CPU settings OneFlow reads when it starts
import oneflow as flow

from oneflow_posmlp.config import ConfigError
from oneflow_posmlp.cpu_kernels import apply_cpu_kernels
from oneflow_posmlp.models import create_model, list_models


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="posmlp_t", help=f"one of {', '.join(list_models())}")
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        model = create_model(args.model).eval()
        apply_cpu_kernels(model)  # a CPU run (POSMLP_CPU_KERNELS=0: the official forms)
    except ConfigError as err:
        parser.exit(2, f"error: {err}\n")
    params = sum(p.numel() for p in model.parameters())
    x = flow.randn(args.batch, 3, *model.img_size)
    start = time.perf_counter()
    with flow.no_grad():
        out = model(x).numpy()
    print(f"{args.model}: {params:,} parameters; input {tuple(x.shape)} -> output {out.shape} "
          f"in {time.perf_counter() - start:.2f} s (eval, CPU)")


if __name__ == "__main__":
    main()
