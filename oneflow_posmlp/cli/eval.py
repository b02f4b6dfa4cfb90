"""Evaluate a checkpoint (trained or converted): top-1 / top-5 and loss on the validation set.

    posmlp-eval -c configs/posmlp_t.yaml --weights OUTPUT/best [--ema] [--opts key=value ...]
    posmlp-eval -c configs/posmlp_t.yaml --weights posmlp_t.safetensors        (or: python tools/eval.py ...)

WEIGHTS: a safetensors file (posmlp-convert) or a training checkpoint directory (read by a restricted reader:
nothing in it runs); weights of other windows than the config's model are carried over
(``oneflow_posmlp.checkpoint.load_pretrained``, one stderr line per kind of change). Only the validation split
(``data.root/data.val_split``) is read.
"""
import json
import sys

from . import config_parser, init_timeout, run


def note(line):
    """A log line on stderr (stdout holds the JSON result), from rank 0 only."""
    import oneflow as flow

    if flow.env.get_rank() == 0:
        print(line, file=sys.stderr)


def main(argv=None):
    p = config_parser(__doc__.splitlines()[0])
    p.add_argument("--weights", required=True, help="converted weights (.safetensors) or a training checkpoint directory")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights of a training checkpoint")
    args = p.parse_args(argv)

    def go():
        from ..checkpoint import load_weights
        from ..config import load_config
        from ..engine import evaluate_weights

        cfg = load_config(args.config, args.opts)
        weights = load_weights(args.weights, ema=args.ema)  # read (safely) before any data
        # the model, its layout and the validation split (no training data); weights of other windows (trained at
        # another resolution) are carried over, each change on stderr
        res, ctx = evaluate_weights(cfg, weights, source=args.weights, log=note)
        if ctx.is_main:
            print(json.dumps({"top1": round(res["top1"], 3), "top5": round(res["top5"], 3),
                              "loss": round(res["loss"], 5), "images": res["count"]}))
        return 0

    return run(go, verbose=args.verbose, join_timeout=init_timeout(args))


if __name__ == "__main__":
    sys.exit(main())
