"""Benchmark a PosMLP on synthetic data: images/s of train and eval steps, eager and nn.Graph, graph compile
seconds, memory, parameters, FLOPs per image and model FLOPs utilisation (MFU); with --profile, where the eager
forward and train step spend their time.

    python tools/benchmark.py --model posmlp_t --batch-size 8 [--steps 5 --warmup 1] [--profile] [--json out.json]
    python tools/benchmark.py --config configs/demo.yaml --batch-size 32 --modes train-eager,train-graph
    python tools/benchmark.py --config configs/posmlp_t.yaml --batch-size 8 --opts train.grad_accum_steps=2
    python tools/benchmark.py --model posmlp_b --batch-size 64 --device cuda --amp
    python tools/benchmark.py --model posmlp_t --batch-size 8 --ranks 2     # data parallel, same global batch

The train modes build their optimizer, lr schedule and step object from the config as the trainer does
(``--config`` with ``--opts``; ``--model NAME``: the schema's default ``train:`` section, the official
recipe); --batch-size, --img-size, --device and --amp override train.batch_size, model.img_size,
dist.device and train.amp. Figures and how to read them: docs/benchmark.md.
"""
import argparse
import os
import socket
import subprocess
import sys

from oneflow_posmlp.cli import add_verbose, add_version, config_help, run

MODES = "train-eager,train-graph,eval-eager,eval-graph"
MODEL_HELP = "a registry name: {names}"


class _Parser(argparse.ArgumentParser):
    """Lists the registry's model names in ``--help`` (read then: the registry imports OneFlow)."""

    def format_help(self):
        from oneflow_posmlp import _env

        _env.prepare_process()
        _env.import_oneflow_quietly()
        from oneflow_posmlp.models import list_models

        for action in self._actions:
            if action.dest == "model":
                action.help = MODEL_HELP.format(names=", ".join(list_models()))
        return super().format_help()


def parse_args(argv=None):
    p = _Parser(description=__doc__.splitlines()[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help=MODEL_HELP.format(names="see --help"))
    which.add_argument("--config", help=config_help() + "; its model: section is benchmarked, its train: "
                                                        "section builds the optimizer and the step")
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE",
                   help="dotted overrides of the config (or of the schema defaults with --model), "
                        "e.g. train.weight_decay=0.05 train.grad_accum_steps=2")
    p.add_argument("--batch-size", type=int, default=8, help="the global batch (split over --ranks); sets "
                                                            "train.batch_size, so the lr scales as in training")
    p.add_argument("--ranks", type=int, default=1,
                   help="data-parallel processes launched with oneflow.distributed.launch (default 1); on CPU each "
                        "OneFlow process computes on one core, so --ranks 2 uses both cores of a 2-core machine")
    p.add_argument("--img-size", type=int, nargs="+", metavar="PX",
                   help="override the model's input size: one value (square) or height width")
    p.add_argument("--steps", type=int, default=5, help="timed steps per mode (default 5)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed steps per mode, >= 1 (default 1; a graph's first call is its compilation)")
    p.add_argument("--modes", default=MODES, help=f"comma-separated subset of {MODES} (default: all)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: the config's dist.device (cpu)")
    p.add_argument("--amp", action="store_true", help="CUDA only: float16 autocast (graphs: AMP with loss scaling)")
    p.add_argument("--profile", action="store_true",
                   help="also time the eager forward by module kind, and with a train mode the eager train step's "
                        "forward and backward by module kind and its optimizer phases")
    p.add_argument("--profile-clock", choices=("wall", "cpu"), default="wall",
                   help="the profile's clock: wall seconds, or this process's CPU seconds (steadier on a shared "
                        "machine; default wall)")
    p.add_argument("--json", metavar="PATH", help="write the results here")
    add_verbose(p)
    add_version(p)
    args = p.parse_args(argv)
    if args.img_size is not None and len(args.img_size) not in (1, 2):
        p.error(f"--img-size takes one value or two (height width), got {len(args.img_size)}")
    return args


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(argv, ranks):
    """Run this command on ``ranks`` processes (``oneflow.distributed.launch --module``, a free master port);
    its exit code."""
    cmd = [sys.executable, "-m", "oneflow.distributed.launch", "--nproc_per_node", str(ranks),
           "--master_port", str(_free_port()), "--module", "oneflow_posmlp.bench.cli"] + list(argv)
    return subprocess.run(cmd).returncode


def _error(message):
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv=None):
    """Run the benchmark; a bad request prints one ``error: ...`` line naming the problem and returns 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.ranks < 1:
        return _error(f"--ranks must be an integer >= 1, got {args.ranks}")
    if args.batch_size % args.ranks:
        return _error(f"--batch-size {args.batch_size} (the global batch) does not split over --ranks {args.ranks}; "
                      f"give a multiple of {args.ranks}")
    world = int(os.environ.get("WORLD_SIZE", "1"))  # set by a launcher (importing oneflow sets it to 1)
    if args.ranks > 1 and world == 1:  # not launched yet: launch the ranks
        return launch(argv, args.ranks)
    if args.ranks != world:
        return _error(f"--ranks {args.ranks} but {world} processes were launched; give --ranks without a launcher "
                      f"(the benchmark launches the ranks)")

    def go():
        from .report import format_table, write_json
        from .runner import BenchmarkError, benchmark_config, check_request, run_benchmark

        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        img_size = None if args.img_size is None else (args.img_size * 2)[:2]
        try:
            cfg = benchmark_config(args.config, args.model, args.opts, batch_size=args.batch_size,
                                   img_size=img_size, device=args.device, amp=args.amp)
            check_request(args.batch_size, args.steps, args.warmup, modes, cfg["dist"]["device"], args.amp, world)
            result = run_benchmark(cfg, modes=modes, steps=args.steps, warmup=args.warmup, profile=args.profile,
                                   label=f"{args.config} model" if args.config else None,
                                   profile_clock=args.profile_clock)
        except BenchmarkError as err:
            return _error(err)
        if int(os.environ.get("RANK", "0")) > 0:
            return 0  # rank 0 reports
        print(format_table(result))
        if args.json:
            write_json(result, args.json)
            print(f"wrote {args.json}")
        return 0

    return run(go, verbose=args.verbose)


if __name__ == "__main__":  # the ranks of --ranks N run `python -m oneflow_posmlp.bench.cli`
    sys.exit(main())
