"""Convert official PosMLP PyTorch checkpoints to OneFlow weights (no PyTorch needed; nothing in the file runs).

    python tools/convert_torch_weights.py --src CKPT --dst OUT.safetensors [--model NAME | --config FILE.yaml]
        [--ema] [--verify REF.npz] [--dtype float32|float16] [--allow-head-mismatch] [--format oneflow]
    python tools/convert_torch_weights.py --src ONEFLOW_DIR --dst OUT.safetensors [--ema]     # the other way

CKPT: a timm training checkpoint (.pth.tar, zip or legacy format), a bare state dict, or safetensors.
OUT: a safetensors file with the official key names; its header holds the source path and sha256, format,
which weights, the resolved model config, dtype and dropped keys. --format oneflow writes a flow.save
directory with posmlp_meta.json instead. ONEFLOW_DIR (converted weights of an earlier version, or a training
checkpoint such as OUTPUT/best) is read by a restricted reader that runs nothing.
"""
import argparse
import sys

try:  # first: re-run under .venv/bin/python when this Python lacks OneFlow (tools/_python.py)
    import _python  # noqa: F401
except ImportError:  # loaded from elsewhere (runpy, importlib): that Python runs the package already
    pass
import oneflow_posmlp  # noqa: F401  (before oneflow)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--src", required=True, help="source checkpoint")
    p.add_argument("--dst", required=True, help="output (OneFlow directory, or .safetensors when exporting)")
    arch = p.add_mutually_exclusive_group()
    arch.add_argument("--model", help="registered model name (posmlp_t, posmlp_s, posmlp_b, posmlp_t_384)")
    arch.add_argument("--config", help="YAML file whose model: section gives the architecture")
    p.add_argument("--num-classes", type=int, help="override model.num_classes (with --allow-head-mismatch)")
    p.add_argument("--ema", action="store_true", help="take state_dict_ema instead of state_dict")
    p.add_argument("--verify", metavar="REF.npz", help="compare eval logits on the npz's input with its logits_eval")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max abs diff accepted by --verify (1e-4)")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    p.add_argument("--format", choices=("safetensors", "oneflow"), default="safetensors",
                   help="output: a safetensors file (default; safe to share) or a OneFlow flow.save directory")
    p.add_argument("--allow-head-mismatch", action="store_true",
                   help="drop classifier (head.*) weights that do not fit, e.g. to fine-tune on other classes")
    args = p.parse_args(argv)

    from oneflow_posmlp.checkpoint import CheckpointError
    from oneflow_posmlp.checkpoint.convert import convert_torch_to_oneflow, export_oneflow_to_safetensors, verify
    from oneflow_posmlp.checkpoint.oneflow_io import is_oneflow_checkpoint
    from oneflow_posmlp.models import ModelConfigError

    try:
        if is_oneflow_checkpoint(args.src):
            export_oneflow_to_safetensors(args.src, args.dst, ema=args.ema)
            return 0
        model_cfg, source = _architecture(args)
        model, _ = convert_torch_to_oneflow(args.src, args.dst, model_cfg, source, ema=args.ema,
                                            allow_head_mismatch=args.allow_head_mismatch, dtype=args.dtype,
                                            out_format=args.format)
        if args.verify:
            diff = verify(model, args.verify, args.tolerance)
            print(f"max abs diff: {diff:.3e}")
            if not diff <= args.tolerance:
                print(f"error: max abs diff {diff:.3e} exceeds the tolerance {args.tolerance:g}", file=sys.stderr)
                return 1
    except (CheckpointError, ModelConfigError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _architecture(args):
    cfg, source = None, None
    if args.model:
        cfg, source = {"name": args.model}, f"--model {args.model}"
    elif args.config:
        import yaml

        from oneflow_posmlp.checkpoint import CheckpointError

        try:
            with open(args.config) as f:
                doc = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as err:
            raise CheckpointError(f"--config {args.config}: cannot read it ({err})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("model"), dict):
            raise CheckpointError(f"--config {args.config}: needs a 'model:' section")
        cfg, source = dict(doc["model"]), f"--config {args.config}"
    if args.num_classes is not None:
        if cfg is None:
            raise SystemExit("error: --num-classes needs --model or --config")
        cfg["num_classes"] = args.num_classes
    return cfg, source


if __name__ == "__main__":
    sys.exit(main())
