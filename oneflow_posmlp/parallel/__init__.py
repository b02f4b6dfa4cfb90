"""Parallel execution through global tensors (SBP): data, tensor and pipeline parallelism."""
from .context import ParallelContext
from .errors import LayoutError

__all__ = ["LayoutError", "ParallelContext"]
