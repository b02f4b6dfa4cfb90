"""Benchmark a PosMLP on synthetic data: images/s of train and eval steps, eager and nn.Graph, graph compile
seconds, memory, parameters and FLOPs per image; with --profile, where the eager forward spends its time.

    python tools/benchmark.py --model posmlp_t --batch-size 8 [--steps 5 --warmup 1] [--profile] [--json out.json]
    python tools/benchmark.py --config configs/demo.yaml --batch-size 32 --modes train-eager,train-graph
    python tools/benchmark.py --model posmlp_b --batch-size 64 --device cuda --amp
    python tools/benchmark.py --model posmlp_t --batch-size 8 --ranks 2     # data parallel, same global batch

The logic is oneflow_posmlp/benchmark.py; figures and how to read them: docs/benchmark.md.
"""
import argparse
import os
import socket
import subprocess
import sys

try:  # first: re-run under .venv/bin/python when this Python lacks OneFlow (tools/_python.py)
    import _python  # noqa: F401
except ImportError:  # loaded from elsewhere (runpy, importlib): that Python runs the package already
    pass
import oneflow_posmlp  # noqa: F401  (before oneflow: makes the CUDA libraries loadable)

MODES = "train-eager,train-graph,eval-eager,eval-graph"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="a registry name: posmlp_t, posmlp_s, posmlp_b, posmlp_t_384")
    which.add_argument("--config", help="a YAML config whose model: section is benchmarked")
    p.add_argument("--opts", nargs="*", default=[], help="dotted overrides of the config (with --config)")
    p.add_argument("--batch-size", type=int, default=8, help="the global batch (split over --ranks)")
    p.add_argument("--ranks", type=int, default=1,
                   help="data-parallel processes launched with oneflow.distributed.launch (default 1); on CPU each "
                        "OneFlow process computes on one core, so --ranks 2 uses both cores of a 2-core machine")
    p.add_argument("--img-size", type=int, nargs="+", metavar="PX",
                   help="override the model's input size: one value (square) or height width")
    p.add_argument("--steps", type=int, default=5, help="timed steps per mode (default 5)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed steps per mode, >= 1 (default 1; a graph's first call is its compilation)")
    p.add_argument("--modes", default=MODES, help=f"comma-separated subset of {MODES} (default: all)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--amp", action="store_true", help="CUDA only: float16 autocast (graphs: AMP with loss scaling)")
    p.add_argument("--profile", action="store_true", help="also time the eager forward by kind of operation")
    p.add_argument("--json", metavar="PATH", help="write the results here")
    args = p.parse_args(argv)
    if args.opts and not args.config:
        p.error("--opts overrides a config: give it with --config")
    if args.img_size is not None and len(args.img_size) not in (1, 2):
        p.error(f"--img-size takes one value or two (height width), got {len(args.img_size)}")
    return args


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(argv, ranks):
    """Run this script on ``ranks`` processes (``oneflow.distributed.launch``, a free master port); its exit code."""
    cmd = [sys.executable, "-m", "oneflow.distributed.launch", "--nproc_per_node", str(ranks),
           "--master_port", str(_free_port()), os.path.abspath(__file__)] + list(argv)
    return subprocess.run(cmd).returncode


def main(argv=None):
    """Run the benchmark; a bad request exits with ``SystemExit("error: ...")`` naming the problem."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.ranks < 1:
        raise SystemExit(f"error: --ranks must be an integer >= 1, got {args.ranks}")
    if args.batch_size % args.ranks:
        raise SystemExit(f"error: --batch-size {args.batch_size} (the global batch) does not split over --ranks "
                         f"{args.ranks}; give a multiple of {args.ranks}")
    world = int(os.environ.get("WORLD_SIZE", "1"))  # set by a launcher (importing oneflow sets it to 1)
    if args.ranks > 1 and world == 1:  # not launched yet: launch the ranks
        return launch(argv, args.ranks)
    if args.ranks != world:
        raise SystemExit(f"error: --ranks {args.ranks} but {world} processes were launched; give --ranks "
                         f"without a launcher (tools/benchmark.py launches the ranks)")
    from oneflow_posmlp.benchmark import BenchmarkError, format_table, run_benchmark, write_json
    from oneflow_posmlp.config import ConfigError, load_config
    from oneflow_posmlp.models import ModelConfigError

    img_size = None if args.img_size is None else (args.img_size * 2)[:2]
    try:
        model = load_config(args.config, args.opts)["model"] if args.config else args.model
        result = run_benchmark(model, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
                               modes=[m.strip() for m in args.modes.split(",") if m.strip()], device=args.device,
                               amp=args.amp, profile=args.profile, img_size=img_size,
                               label=f"{args.config} model" if args.config else None)
    except (BenchmarkError, ConfigError, ModelConfigError) as err:
        raise SystemExit(f"error: {err}") from None
    if int(os.environ.get("RANK", "0")) > 0:
        return 0  # rank 0 reports
    print(format_table(result))
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
