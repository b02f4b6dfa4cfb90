"""Pack an ImageFolder tree into tar shards with an index, from a checkout
(the tool is oneflow_posmlp/cli/make_shards.py).

    python tools/make_shards.py --help

Started with a Python that lacks OneFlow (the system ``python3``), it re-runs under the checkout's
``.venv/bin/python`` (tools/_python.py).
"""
import sys

try:  # first: re-run under .venv/bin/python when this Python lacks OneFlow (tools/_python.py)
    import _python  # noqa: F401
except ImportError:  # loaded from elsewhere (runpy, importlib): that Python runs the package already
    pass
from oneflow_posmlp.cli.make_shards import main  # noqa: E402  (imports oneflow_posmlp before oneflow)

if __name__ == "__main__":
    sys.exit(main())
