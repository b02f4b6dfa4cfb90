"""Atomic output: write under a temporary name beside the target, then rename; nothing is left on failure."""
import contextlib
import os
import shutil


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


@contextlib.contextmanager
def atomic_path(dst):
    """Yield a temporary path (file or directory) beside ``dst``; on success it replaces ``dst``.

    A directory target (``flow.save`` writes directories) replaces an existing one by moving the old one
    aside first, so at every moment ``dst`` is either the old complete output or the new one.
    """
    dst = os.path.abspath(str(dst))
    parent = os.path.dirname(dst)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(dst)}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        if os.path.isdir(tmp) and os.path.isdir(dst):
            old = tmp + ".old"
            os.rename(dst, old)
            os.rename(tmp, dst)
            _remove(old)
        else:
            os.replace(tmp, dst)
    finally:
        _remove(tmp)
