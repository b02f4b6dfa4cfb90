"""Export a PosMLP (trained, converted or freshly initialised) to ONNX and check it in onnxruntime.

    posmlp-export-onnx -c configs/posmlp_t.yaml [--weights OUTPUT/best] --out posmlp_t.onnx
        [--batch-size 1] [--features-only] [--no-check]                (or: python tools/export_onnx.py ...)

Needs the onnx extra: pip install -e .[onnx] (oneflow-onnx 0.6.2, onnx 1.14.1, onnxruntime 1.16.3).
"""
import json
import sys

from . import config_parser, run


def main(argv=None):
    p = config_parser(__doc__.splitlines()[0])
    p.add_argument("--weights", help="a training checkpoint directory or converted weights (default: random init)")
    p.add_argument("--ema", action="store_true", help="export the EMA weights of a training checkpoint")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--batch-size", type=int, default=1, help="the (fixed) batch of the exported graph")
    p.add_argument("--features-only", action="store_true",
                   help="export the multi-scale backbone (the maps of all levels) instead of the classifier")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error("--batch-size must be at least 1")

    def go():
        from ..checkpoint import load_into_model, load_pretrained, load_weights
        from ..checkpoint.load import CONFIG_HEAD_FIX
        from ..config import load_config
        from ..export.onnx import OnnxUnavailable, export_onnx, import_oneflow_onnx
        from ..models import build_model

        try:
            import_oneflow_onnx()
        except OnnxUnavailable as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        cfg = load_config(args.config, list(args.opts))
        model = build_model(cfg["model"])
        if args.weights:
            load_pretrained(model, load_weights(args.weights, ema=args.ema), source=args.weights, head_fix=CONFIG_HEAD_FIX,
                            log=lambda line: print(line, file=sys.stderr))  # nothing in the file runs; other windows
        if args.features_only:
            backbone = build_model(cfg["model"], features_only=True)
            state = {k: v.numpy() for k, v in model.state_dict().items() if k in backbone.state_dict()}
            load_into_model(backbone, state)
            model = backbone
        diff = export_onnx(model, args.out, batch_size=args.batch_size, check=not args.no_check)
        print(json.dumps({"onnx": args.out, "input": [args.batch_size, model.in_chans, *model.img_size],
                          "max_abs_diff_vs_oneflow": diff}))
        return 0

    return run(go, verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
