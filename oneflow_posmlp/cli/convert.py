"""Convert official PosMLP PyTorch checkpoints to OneFlow weights (no PyTorch needed; nothing in the file runs).

    posmlp-convert --src CKPT --dst OUT.safetensors [--model NAME | --config FILE.yaml [--opts key=value ...]]
        [--ema] [--verify REF.npz [--rtol R] [--atol A]] [--dtype float32|float16] [--allow-head-mismatch]
        [--format oneflow]
    posmlp-convert --src ONEFLOW_DIR --dst OUT.safetensors [--ema]     # the other way
    (or: python tools/convert_torch_weights.py ...)

CKPT: a timm training checkpoint (.pth.tar, zip or legacy format), a bare state dict, or safetensors.
The architecture: --model (a registry name), --config (a config file, loaded and validated as for training;
its model: section), or else the checkpoint's own args.model_hyper.
OUT: a safetensors file with the official key names; its header holds the source path and sha256, format,
which weights, the resolved model config, dtype and dropped keys. --format oneflow writes a flow.save
directory with posmlp_meta.json instead. ONEFLOW_DIR (converted weights of an earlier version, or a training
checkpoint such as OUTPUT/best) is read by a restricted reader that runs nothing.
"""
import argparse
import sys

from . import add_verbose, add_version, config_help, run


def main(argv=None):
    from ..conversion import VERIFY_ATOL, VERIFY_RTOL  # (numpy, no OneFlow: --help stays quick)
    from ..config.model import list_models  # no OneFlow: the registry for --help

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--src", required=True, help="source checkpoint")
    p.add_argument("--dst", required=True, help="output (OneFlow directory, or .safetensors when exporting)")
    arch = p.add_mutually_exclusive_group()
    arch.add_argument("--model", help=f"registered model name: {', '.join(list_models())}")
    arch.add_argument("--config", help=config_help() + "; its model: section gives the architecture (validated "
                                                       "as for training)")
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE",
                   help="dotted overrides of --config, e.g. model.num_classes=10")
    p.add_argument("--num-classes", type=int, help="override model.num_classes (with --allow-head-mismatch)")
    p.add_argument("--ema", action="store_true", help="take state_dict_ema instead of state_dict")
    p.add_argument("--verify", metavar="REF.npz",
                   help="run the converted model in eval mode on the npz's input and compare the outputs it holds "
                        "(logits_eval; features_eval when present)")
    p.add_argument("--rtol", "--tolerance", type=float, default=VERIFY_RTOL,
                   help=f"--verify accepts max|ours - ref| <= rtol x max|ref| + atol, per output ({VERIFY_RTOL:g})")
    p.add_argument("--atol", type=float, default=VERIFY_ATOL,
                   help=f"absolute floor of the --verify tolerance ({VERIFY_ATOL:g})")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    p.add_argument("--format", choices=("safetensors", "oneflow"), default="safetensors",
                   help="output: a safetensors file (default; safe to share) or a OneFlow flow.save directory")
    p.add_argument("--allow-head-mismatch", action="store_true",
                   help="drop classifier (head.*) weights that do not fit, e.g. to fine-tune on other classes")
    add_verbose(p)
    add_version(p)
    args = p.parse_args(argv)
    if args.opts and not args.config:
        p.error("--opts overrides a config: give it with --config")
    if args.num_classes is not None and not (args.model or args.config):
        p.error("--num-classes needs --model or --config")

    def go():
        from ..conversion import VerificationError, convert_torch_to_oneflow, export_oneflow_to_safetensors, verify
        from ..checkpoint.oneflow_io import is_oneflow_checkpoint

        try:
            if is_oneflow_checkpoint(args.src):
                export_oneflow_to_safetensors(args.src, args.dst, ema=args.ema)
                return 0
            model_cfg, source = architecture(args)
            model, _ = convert_torch_to_oneflow(args.src, args.dst, model_cfg, source, ema=args.ema,
                                                allow_head_mismatch=args.allow_head_mismatch, dtype=args.dtype,
                                                out_format=args.format)
        except OSError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if args.verify:
            try:
                checks = verify(model, args.verify, args.rtol, args.atol)
            except VerificationError as err:
                for check in err.checks:
                    print(f"verify {check}")
                print(f"error: {err}", file=sys.stderr)
                return 1
            for check in checks:
                print(f"verify {check}")
        return 0

    return run(go, verbose=args.verbose)


def architecture(args):
    """``(model: section or None, where it came from)`` of ``--model`` / ``--config`` + ``--opts``
    (``load_config``: a ConfigError names a bad key), with ``--num-classes``; None: the checkpoint's own."""
    from ..config import load_config

    if args.model:
        cfg, source = {"name": args.model}, f"--model {args.model}"
    elif args.config:
        cfg, source = load_config(args.config, args.opts)["model"], f"--config {args.config}"
    else:
        return None, None
    if args.num_classes is not None:
        cfg["num_classes"] = args.num_classes
    return cfg, source


if __name__ == "__main__":
    sys.exit(main())
