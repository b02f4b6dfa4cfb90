"""Errors of the parallel layout."""


class LayoutError(ValueError):
    """A parallel layout that does not fit the world size or the model; raised on every rank at start."""
