"""Errors of checkpoint reading and conversion: each message names the problem and the fix."""
import errno
import os
import shutil


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit (truncated, corrupt, wrong model)."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose pickle asks for something other than tensors and plain containers."""


def _size(n):
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def disk_full_error(err, path, needed):
    """A :class:`CheckpointError` for ``OSError`` ENOSPC/EDQUOT while writing ``path`` (``needed`` bytes), or
    None for any other error."""
    if not isinstance(err, OSError) or err.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    parent = os.path.dirname(os.path.abspath(str(path)))
    try:
        free = f", {_size(shutil.disk_usage(parent).free)} free"
    except OSError:
        free = ""
    return CheckpointError(f"no space left on the device while writing {path}: it needs about {_size(needed)}"
                           f"{free}; free some space (nothing was replaced: an existing {os.path.basename(str(path))} "
                           f"is unchanged)")
