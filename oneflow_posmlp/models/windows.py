"""Window partition / reverse and the Swin-style mask of shifted windows.

Tensors: feature maps ``(B, H, W, C)``; windows ``(B, nW, N, C)`` with ``nW = (H/wh) * (W/ww)``
windows in row-major order and ``N = wh * ww`` tokens per window, row-major inside a window.
"""
import numpy as np

from .token_mixing import MASK_NEG


def window_partition(x, wh: int, ww: int):
    """``(B, H, W, C) -> (B, nW, N, C)``."""
    B, H, W, C = x.shape
    x = x.reshape(B, H // wh, wh, W // ww, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, (H // wh) * (W // ww), wh * ww, C)


def window_reverse(x, H: int, W: int, wh: int, ww: int):
    """``(B, nW, N, C) -> (B, H, W, C)``, the inverse of :func:`window_partition`."""
    B, C = x.shape[0], x.shape[-1]
    x = x.reshape(B, H // wh, W // ww, wh, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, H, W, C)


def shifted_window_regions(H: int, W: int, win: int, shift: int) -> np.ndarray:
    """int ``(H, W)`` region labels of the cyclically shifted map: tokens that were not spatial
    neighbours before the shift (wrapped around the border) get different labels."""
    regions = np.zeros((H, W), dtype=np.int64)
    bounds = (slice(0, -win), slice(-win, -shift), slice(-shift, None))
    label = 0
    for hs in bounds:
        for ws in bounds:
            regions[hs, ws] = label
            label += 1
    return regions


def shifted_window_mask(H: int, W: int, win: int, shift: int) -> np.ndarray:
    """float32 ``(nW, N, N)`` additive mask: 0 where tokens m, n of a window share a region,
    :data:`MASK_NEG` where they do not (Swin Transformer, Liu et al. 2021)."""
    regions = shifted_window_regions(H, W, win, shift)
    windows = regions.reshape(H // win, win, W // win, win).transpose(0, 2, 1, 3).reshape(-1, win * win)
    same = windows[:, :, None] == windows[:, None, :]
    return np.where(same, 0.0, MASK_NEG).astype(np.float32)
