"""Errors of checkpoint reading and conversion: each message names the problem and the fix."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit (truncated, corrupt, wrong model)."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose pickle asks for something other than tensors and plain containers."""
