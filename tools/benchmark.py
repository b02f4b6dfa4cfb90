"""Benchmark a PosMLP on synthetic data: images/s of train and eval steps, eager and nn.Graph, graph compile
seconds, peak memory, parameters and FLOPs per image; optionally where the eager forward spends its time.

    python tools/benchmark.py --model posmlp_t --batch-size 8 [--steps 5 --warmup 1] [--profile] [--json out.json]
    python tools/benchmark.py --config configs/demo.yaml --batch-size 32 --modes train-eager,train-graph
"""
import argparse
import sys

import oneflow_posmlp  # noqa: F401  (before oneflow)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="a registry name: posmlp_t, posmlp_s, posmlp_b, posmlp_t_384")
    which.add_argument("--config", help="a YAML config whose model: section is benchmarked")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=5, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per mode (a graph's first is its compile)")
    p.add_argument("--modes", default="train-eager,train-graph,eval-eager,eval-graph")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--amp", action="store_true", help="CUDA only: autocast (fp16) steps")
    p.add_argument("--profile", action="store_true", help="also time the eager forward by module kind")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--opts", nargs="*", default=[], help="dotted overrides of the config (with --config)")
    args = p.parse_args(argv)

    from oneflow_posmlp.benchmark import BenchmarkError, format_table, run_benchmark, write_json
    from oneflow_posmlp.config import ConfigError, load_config
    from oneflow_posmlp.models import ModelConfigError

    try:
        model_cfg = load_config(args.config, args.opts)["model"] if args.config else args.model
        result = run_benchmark(model_cfg, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
                               modes=[m for m in args.modes.split(",") if m], device=args.device, amp=args.amp,
                               profile=args.profile)
    except (BenchmarkError, ConfigError, ModelConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
