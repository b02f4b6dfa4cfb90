"""Evaluate a checkpoint (trained or converted): top-1 / top-5 and loss on the validation set.

    python tools/eval.py -c configs/posmlp_t.yaml --weights OUTPUT/best [--ema] [--opts key=value ...]
    python tools/eval.py -c configs/posmlp_t.yaml --weights posmlp_t.safetensors

WEIGHTS: a safetensors file (tools/convert_torch_weights.py) or a training checkpoint directory (read by a
restricted reader: nothing in it runs). Only the validation split (``data.root/data.val_split``) is read.
"""
import json
import sys

try:  # first: re-run under .venv/bin/python when this Python lacks OneFlow (tools/_python.py)
    import _python  # noqa: F401
except ImportError:  # loaded from elsewhere (runpy, importlib): that Python runs the package already
    pass
import oneflow_posmlp  # noqa: F401  (before oneflow)
from oneflow_posmlp.cli import config_parser, run


def main(argv=None):
    p = config_parser(__doc__.splitlines()[0])
    p.add_argument("--weights", required=True, help="converted weights (.safetensors) or a training checkpoint directory")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights of a training checkpoint")
    args = p.parse_args(argv)

    def go():
        from oneflow_posmlp.checkpoint import load_weights
        from oneflow_posmlp.config import load_config
        from oneflow_posmlp.engine import evaluate_weights

        cfg = load_config(args.config, args.opts)
        weights, _ = load_weights(args.weights, ema=args.ema)
        res, ctx = evaluate_weights(cfg, weights)  # the model, its layout and the validation split: no training data
        if ctx.is_main:
            print(json.dumps({"top1": round(res["top1"], 3), "top5": round(res["top5"], 3),
                              "loss": round(res["loss"], 5), "images": res["count"]}))
        return 0

    return run(go, verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
