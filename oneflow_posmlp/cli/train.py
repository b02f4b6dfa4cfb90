"""Train PosMLP.

    posmlp-train -c configs/posmlp_t.yaml [--opts key=value ...] [--resume auto|DIR] [--init WEIGHTS]
    python tools/train.py -c configs/posmlp_t.yaml ...                       # the same, from a checkout
    python -m oneflow.distributed.launch --nproc_per_node 8 tools/train.py -c configs/posmlp_b.yaml
    python -m oneflow.distributed.launch --nproc_per_node 8 -m oneflow_posmlp.cli.train -c configs/posmlp_b.yaml
"""
import sys

from . import config_parser, run


def main(argv=None):
    p = config_parser(__doc__.splitlines()[0])
    p.add_argument("--output", help="output directory (default: output.dir of the config)")
    p.add_argument("--resume", help="training checkpoint to continue from, or 'auto' for OUTPUT/last if present")
    p.add_argument("--init", help="converted weights to start from (a .safetensors file of "
                                  "posmlp-convert; OneFlow directories are read safely too)")
    args = p.parse_args(argv)

    def go():
        from ..config import load_config
        from ..engine import Trainer
        from ..engine.logger import expect_log

        if args.output:
            expect_log(args.output)  # an error from here on is also written to this rank's log (cli.run)
        cfg = load_config(args.config, args.opts)
        expect_log(args.output or cfg["output"]["dir"])
        Trainer(cfg, output_dir=args.output, resume=args.resume, init=args.init).fit()
        return 0

    return run(go, verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
