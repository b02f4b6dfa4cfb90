"""Train PosMLP.

    posmlp-train -c configs/posmlp_t.yaml [--opts key=value ...] [--resume auto|DIR] [--init WEIGHTS]
    python tools/train.py -c configs/posmlp_t.yaml ...                       # the same, from a checkout
    python -m oneflow.distributed.launch --nproc_per_node 8 tools/train.py -c configs/posmlp_b.yaml
    python -m oneflow.distributed.launch --nproc_per_node 8 -m oneflow_posmlp.cli.train -c configs/posmlp_b.yaml
    srun --ntasks-per-node 8 python tools/train.py -c configs/posmlp_b.yaml      # ranks from SLURM (docs/cluster.md)

Exit codes: 0 finished; 75 stopped early (a stop signal, train.max_minutes) with a resumable `last`: run it again
with --resume auto; 3 halted on a non-finite loss, gradient norm or validation loss (nothing written); 2 bad input
(or ranks that did not meet within dist.init_timeout); 1 a bug.
"""
import sys
import time

from . import config_parser, init_timeout, run


def main(argv=None):
    started = time.time()  # train.max_minutes counts from here
    p = config_parser(__doc__.splitlines()[0])
    p.add_argument("--output", help="output directory (default: output.dir of the config)")
    p.add_argument("--resume", help="training checkpoint to continue from, or 'auto' for OUTPUT/last if present")
    p.add_argument("--init", help="converted weights to start from (a .safetensors file of "
                                  "posmlp-convert; OneFlow directories are read safely too)")
    args = p.parse_args(argv)

    def go():
        from ..config import load_config
        from ..engine import Trainer
        from ..engine.logger import expect_log, log_error
        from ..engine.stop import NonFiniteHalt, TrainingStopped

        if args.output:
            expect_log(args.output)  # an error from here on is also written to this rank's log (cli.run)
        cfg = load_config(args.config, args.opts)
        expect_log(args.output or cfg["output"]["dir"])
        trainer = Trainer(cfg, output_dir=args.output, resume=args.resume, init=args.init, start_time=started)
        try:
            trainer.fit()
        except TrainingStopped as stop:  # the trainer logged why and where `last` is
            return stop.exit_code
        except NonFiniteHalt as halt:  # in the rank's log too, as every error line (cli.run)
            log_error(f"error: {halt}")
            print(f"error: {halt}", file=sys.stderr, flush=True)
            return halt.exit_code
        return 0

    return run(go, verbose=args.verbose, join_timeout=init_timeout(args))


if __name__ == "__main__":
    sys.exit(main())
