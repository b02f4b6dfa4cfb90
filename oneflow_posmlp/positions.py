"""Relative positions of the tokens of a window (NumPy): the buffers PoSGU's positional maps are indexed by.

Shared by the model (:mod:`oneflow_posmlp.models.token_mixing`) and the weight transfer
(:mod:`oneflow_posmlp.checkpoint.transfer`, which rebuilds them for another window).
"""
import numpy as np


def quadratic_relative_indices(win_size: int, generalized: bool = True) -> np.ndarray:
    """Relative-offset features of every token pair in a ``win_size x win_size`` window.

    Returns float32 ``(N, N, 5)`` ``[dx, dy, dx^2, dy^2, dx*dy]`` (generalized) or ``(N, N, 3)``
    ``[dx, dy, dx^2 + dy^2]``, laid out exactly as the official ``QuaMap.get_rel_indices``.
    """
    h = w = win_size
    ind = np.arange(h).reshape(1, -1) - np.arange(w).reshape(-1, 1)  # ind[i, j] = j - i
    indx = np.tile(ind, (h, w))
    indy = np.repeat(np.repeat(ind, h, axis=0), w, axis=1).T
    if generalized:
        feats = [indx, indy, indx ** 2, indy ** 2, indx * indy]
    else:
        feats = [indx, indy, indx ** 2 + indy ** 2]
    return np.stack(feats, axis=-1).astype(np.float32)


def relative_position_index(win_size: int) -> np.ndarray:
    """int64 ``(N, N)`` index into a ``((2h-1)(2w-1), gamma)`` table of relative offsets (Swin)."""
    h = w = win_size
    coords = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij")).reshape(2, -1)  # (2, N)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0)  # (N, N, 2)
    rel[:, :, 0] += h - 1
    rel[:, :, 1] += w - 1
    rel[:, :, 0] *= 2 * w - 1
    return rel.sum(-1).astype(np.int64)
