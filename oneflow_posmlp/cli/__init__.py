"""The command-line tools: one module per tool holding ``main(argv=None)`` (``train``, ``eval``, ``convert``,
``predict``, ``export_onnx``), installed as the console scripts ``posmlp-train``, ``posmlp-eval``, ... (setup.cfg)
and run by the thin ``tools/*.py``; and their shared plumbing here: config loading, ``--verbose`` and clean errors.
"""
import argparse
import os
import sys

from .. import _env, rendezvous, slurm


def config_parser(description, **kwargs):
    """An argument parser with ``-c/--config``, ``--opts``, ``--verbose`` and ``--version`` (``kwargs``:
    ArgumentParser's)."""
    p = argparse.ArgumentParser(description=description, **kwargs)
    p.add_argument("-c", "--config", required=True, help=config_help())
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE",
                   help="dotted overrides, e.g. train.lr=1e-3 model.num_classes=10")
    add_verbose(p)
    add_version(p)
    return p


def config_help():
    """``-c``'s help: a path, or one of the built-in names (no OneFlow imported: ``--help`` stays quick)."""
    from ..config.loader import builtin_configs

    return f"YAML config: a file, or a built-in name ({', '.join(builtin_configs())})"


def add_version(parser):
    """``--version``: this package's version and the stack's (:func:`oneflow_posmlp.version.version_text`)."""
    parser.add_argument("--version", action=_PrintVersion)
    return parser


class _PrintVersion(argparse.Action):
    """Prints ``PROG: oneflow-posmlp X.Y.Z (OneFlow ..., flowvision ..., Python ...)`` on one line and exits
    (argparse's own version action wraps it at the terminal width)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the version of oneflow-posmlp (and of OneFlow, flowvision, Python) and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        from ..version import version_text

        print(f"{parser.prog}: {version_text()}")
        parser.exit()


def add_verbose(parser):
    parser.add_argument("--verbose", action="store_true",
                        help="show OneFlow's own start-up and log lines (also: POSMLP_VERBOSE=1)")
    return parser


def init_timeout(args):
    """``dist.init_timeout`` of the tool's ``-c`` config and ``--opts``, read before OneFlow is imported."""
    from ..config.loader import peek

    return peek(getattr(args, "config", None), getattr(args, "opts", None), "dist.init_timeout")


def run(main, verbose=False, join_timeout=None):
    """Call ``main()`` after importing OneFlow (its CPU start-up noise hidden unless ``verbose`` or
    ``POSMLP_VERBOSE=1``); user errors (bad config, data, checkpoint, layout, export) become one ``error: ...``
    line and exit 2. Anything else is a bug and keeps its traceback. Started by ``srun`` without a launcher,
    the ranks come from SLURM's variables (``oneflow_posmlp/slurm.py``, before OneFlow is imported), and the
    process settings OneFlow reads at start-up are set first (``_env.prepare_process``).

    The error line is written first to this rank's log file (``log_rank{rank}.txt``) when the tool named one
    (``engine.logger.expect_log``: ``posmlp-train`` does once the config names the output directory) and its
    directory exists (``engine.logger.log_error``), then to
    stderr: under ``oneflow.distributed.launch`` the launcher ends every rank as soon as one exits and then prints
    its own ``CalledProcessError`` traceback (docs/parallel.md), so each rank's log says why the job stopped.

    A multi-rank start meets its ranks first (``oneflow_posmlp/rendezvous.py``), for at most ``join_timeout``
    seconds (``dist.init_timeout``, :func:`init_timeout`; None: the schema default)."""
    _env.prepare_process(verbose)  # CPU defaults and quiet logs, before OneFlow starts
    try:
        slurm.apply_slurm_env()
        _join(join_timeout)
    except (ValueError, rendezvous.JoinError) as err:
        if not getattr(err, "quiet", False):
            print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    _env.import_oneflow_quietly()
    from ..checkpoint import CheckpointError
    from ..config import ConfigError
    from ..data import DataError
    from ..engine.logger import forget_log, log_error
    from ..export.onnx import ExportError
    from ..parallel import LayoutError

    forget_log()
    try:
        return main()
    except (ConfigError, DataError, CheckpointError, LayoutError, ExportError, FileExistsError) as err:
        line = f"error: {err}"
        log_error(line)
        print(line, file=sys.stderr, flush=True)
        return 2


def _join(timeout):
    if timeout is None:
        from ..config.schema import DEFAULTS

        timeout = DEFAULTS["dist"]["init_timeout"]
    source = "SLURM" if os.environ.get(slurm.MARK) else "RANK/WORLD_SIZE"
    rendezvous.join(timeout, source)
