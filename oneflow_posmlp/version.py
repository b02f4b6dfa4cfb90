"""Which oneflow-posmlp this is, and on which stack: for ``--version``, the first line of every run's log and the
metadata of the checkpoints and weights it writes.

The version itself is set in one place, ``oneflow_posmlp.__version__`` (``oneflow_posmlp/__init__.py``); setup.cfg
reads it from there (``version = attr: oneflow_posmlp.__version__``). Nothing here imports OneFlow: the other
versions are read from the installed distributions' metadata.
"""
import platform

from . import __version__

try:
    from importlib import metadata
except ImportError:  # Python 3.7: no importlib.metadata
    metadata = None

__all__ = ["__version__", "installed_version", "version_text"]


def installed_version(dist):
    """The version of the installed distribution ``dist`` (e.g. ``oneflow``), or ``"not installed"``."""
    if metadata is None:
        return "unknown"
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def version_text():
    """``oneflow-posmlp 0.1.0 (OneFlow 0.9.0, flowvision 0.2.1, Python 3.10.13)``."""
    return (f"oneflow-posmlp {__version__} (OneFlow {installed_version('oneflow')}, "
            f"flowvision {installed_version('flowvision')}, Python {platform.python_version()})")
