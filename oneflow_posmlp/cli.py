"""Shared command-line plumbing of tools/train.py and tools/eval.py: config loading and clean errors."""
import argparse
import sys


def config_parser(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("-c", "--config", required=True, help="YAML config (configs/*.yaml)")
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE",
                   help="dotted overrides, e.g. train.lr=1e-3 model.num_classes=10")
    return p


def run(main):
    """Call ``main()``; user errors (bad config, data, checkpoint, layout) become ``error: ...`` and exit 2."""
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data import DataError
    from .models import ModelConfigError
    from .parallel import LayoutError

    try:
        return main()
    except (ConfigError, DataError, CheckpointError, ModelConfigError, LayoutError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # data/batch layout problems raised before training
        print(f"error: {err}", file=sys.stderr)
        return 2
