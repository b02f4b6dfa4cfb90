"""Predict the top-k classes of images (files or folders) with a trained or converted PosMLP.

    posmlp-predict -c configs/demo.yaml --weights output/demo/best data/demo_shapes/val [--json]
    (or: python tools/predict.py ...)
"""
import json
import sys

from . import config_parser, run


def main(argv=None):
    p = config_parser(__doc__.splitlines()[0])
    p.add_argument("--weights", required=True, help="converted weights (.safetensors) or a training checkpoint directory")
    p.add_argument("--ema", action="store_true", help="use the EMA weights of a training checkpoint")
    p.add_argument("--labels", help="class names: a text file with one name per line, or a JSON list "
                                     "(default: the classes stored with the weights)")
    p.add_argument("--topk", type=int, default=5, help="classes reported per image (default 5)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively)")
    args = p.parse_args(argv)
    if args.topk < 1 or args.batch_size < 1:
        p.error("--topk and --batch-size must be at least 1")

    def go():
        from ..checkpoint.load import CONFIG_HEAD_FIX, load_pretrained
        from ..checkpoint import load_weights
        from ..config import load_config
        from ..cpu_kernels import apply_cpu_kernels
        from ..data import create_eval_transform, resolve_data_config
        from ..models import build_model
        from ..predict import check_names, class_names, collect_images, format_table, predict

        cfg = load_config(args.config, list(args.opts))
        files, errors = collect_images(args.paths)
        if not files:  # nothing to predict: the reasons, before any model or weights are read
            reasons = "; ".join(f"{path}: {reason}" for path, reason in errors)
            print(f"error: no image to predict ({reasons}); pass image files or folders holding images",
                  file=sys.stderr)
            return 2
        model = build_model(cfg["model"])
        _, _, meta = load_pretrained(model, load_weights(args.weights, ema=args.ema), source=args.weights,
                                     head_fix=CONFIG_HEAD_FIX, log=lambda line: print(line, file=sys.stderr))  # other windows
        apply_cpu_kernels(model, cfg["dist"]["cpu_kernels"])  # predict runs on the CPU
        names = check_names(class_names(meta, args.labels), model.num_classes)
        transform = create_eval_transform(resolve_data_config(model.default_cfg, cfg["aug"]))
        results = [{"path": path, "error": reason} for path, reason in errors]
        results += list(predict(model, transform, files, names, topk=args.topk, batch_size=args.batch_size))
        failed = [r for r in results if "error" in r]
        if len(failed) < len(results):  # (no table of errors alone: they follow as error lines)
            if args.json:
                print(json.dumps({"predictions": [r for r in results if "error" not in r], "errors": failed},
                                 indent=1))
            else:
                print(format_table(results))
        for r in failed:
            print(f"error: {r['path']}: {r['error']}", file=sys.stderr)
        if len(failed) == len(results):
            print("error: no image could be read; pass image files or folders holding images", file=sys.stderr)
            return 2
        return 0

    return run(go, verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
