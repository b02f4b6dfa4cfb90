"""Parallel execution: the data-parallel context (global tensors with SBP)."""
from .context import LayoutError, ParallelContext

__all__ = ["LayoutError", "ParallelContext"]
