"""Atomic output: write under a temporary name beside the target, then rename; nothing is left on failure.

A directory target is replaced in two renames (the old one aside to ``.NAME.old``, the new one in place). A
process killed between them (SIGKILL, a second stop signal, a node lost) leaves no ``NAME`` but a complete
``.NAME.old``: :func:`recover` puts it back (every write and ``--resume`` call it first), so such a kill costs the
updates since the previous save, never the checkpoint."""
import contextlib
import glob
import os
import shutil


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def _tmp_prefix(dst):
    return os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}.tmp-")


def _aside(dst):
    return os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}.old")


def recover(dst):
    """Finish a replacement of the directory ``dst`` that a killed process left half done: if ``dst`` is missing
    and its previous version waits aside (``.NAME.old``), move it back; if both exist (killed after the new one
    was in place), drop the old one. Unfinished temporary copies a killed writer left (``.NAME.tmp-PID``) are
    removed: one process writes an output at a time, and it calls this before it starts. Returns a sentence
    for the log when ``dst`` was restored, else None. Safe to call from every rank at once (a rename another
    rank made first is not an error)."""
    dst = os.path.abspath(str(dst))
    aside = _aside(dst)
    stale = glob.glob(glob.escape(_tmp_prefix(dst)) + "*")
    try:
        legacy = sorted((p for p in stale if p.endswith(".old")), key=os.path.getmtime)
        if legacy and not os.path.lexists(dst) and not os.path.lexists(aside):
            os.rename(legacy[-1], aside)  # the aside name of earlier versions: .NAME.tmp-PID.old
    except FileNotFoundError:  # another rank moved it first
        pass
    for path in stale:  # a killed writer's copy (GBs for posmlp_b)
        _remove(path)
    if not os.path.lexists(aside):
        return None
    if os.path.lexists(dst):
        _remove(aside)
        return None
    try:
        os.rename(aside, dst)
    except FileNotFoundError:  # another rank (same file system) restored it first
        return None
    return (f"{dst} was missing (a save was interrupted between its two renames); restored the previous "
            f"complete checkpoint from {aside}")


@contextlib.contextmanager
def atomic_path(dst):
    """Yield a temporary path (file or directory) beside ``dst``; on success it replaces ``dst``.

    A directory target (``flow.save`` writes directories) replaces an existing one by moving the old one
    aside first (``.NAME.old``), so at every moment ``dst`` is either the old complete output or the new one, or,
    in a process killed between the two renames, the old one waits aside for :func:`recover`. If the second
    rename fails, the old one is put back.
    """
    dst = os.path.abspath(str(dst))
    parent = os.path.dirname(dst)
    os.makedirs(parent, exist_ok=True)
    recover(dst)
    tmp = f"{_tmp_prefix(dst)}{os.getpid()}"
    _remove(tmp)
    try:
        yield tmp
        if os.path.isdir(tmp) and os.path.isdir(dst):
            aside = _aside(dst)
            os.rename(dst, aside)
            try:
                os.rename(tmp, dst)
            except BaseException:
                os.rename(aside, dst)
                raise
            _remove(aside)
        else:
            os.replace(tmp, dst)
    finally:
        _remove(tmp)
