"""Carry weights over to a model with other windows: fine-tuning at another resolution (224 -> 384) or window size.

A PosMLP's tensors depend on the image size only through the windows (no tensor has the size of the image), so a
transfer is a change of the per-level window ``w -> w'`` (``N = w^2`` tokens per window). Every tensor of the
weights falls in one of three kinds:

- **window-independent, loaded exactly**: every Linear/Conv/norm/head tensor, and GQPE's
  ``attention_centers``/``attention_spreads`` (the map is a function of the relative offset ``d``, so the same
  Gaussian covers the larger or smaller window: the transferred model's map is exactly that of a model built at
  ``w'`` with the same centres and spreads);
- **functions of the window, rebuilt for the target, never loaded**: GQPE ``rel_indices`` ``(N, N, 5|3)``, LRPE
  ``window_relative_position_index`` ``(N, N)``; shift masks are not stored (non-persistent buffers built at
  construction); a stored ``shift_mask``/``attn_mask`` (another exporter's) is dropped;
- **learned and indexed by position, resized**: LRPE ``window_relative_position_bias_table`` ``((2w-1)^2, gamma)``
  per group on its ``(2w-1) x (2w-1)`` offset grid; the absolute token bias ``token_proj_n_bias`` ``(1, w^2, 1)``
  on its ``w x w`` grid; the gated unit's dense ``token_proj_n_weight`` ``(1, N, N)`` as the 4-D map
  ``(w, w, w, w)`` (and the gMLP SGU baseline's ``proj_list.k.weight`` ``(N, N)`` / ``.bias`` ``(N,)`` alike).

Resizing is bicubic as Swin's ``load_pretrained`` (microsoft/Swin-Transformer ``utils.py``) resizes its
relative-position tables: ``torch.nn.functional.interpolate(mode="bicubic")`` with the default
``align_corners=False``, i.e. PyTorch's ``upsample_bicubic2d``: source coordinate
``(dst + 0.5) * n_in / n_out - 0.5`` (half-pixel centres), Keys' cubic convolution with ``A = -0.75``, the four
taps clamped to the border, no antialiasing when shrinking. :func:`bicubic_matrix` computes that map in float64 as
an ``(n_out, n_in)`` matrix applied along each grid axis (bicubic is separable), so it extends to the 4-D map and
is exact where it promises to be: an unchanged size is the identity, the centre of an odd grid (offset 0 of a
relative table) lands exactly on the source centre and keeps its value bit for bit, and flips/transposes of the
grid commute with the resize. OneFlow 0.9.0's ``flow.nn.functional.interpolate(mode="bicubic",
align_corners=False)`` computes the same (to float32 rounding; tests/test_checkpoint_transfer.py).

The windows of the weights are read from the tensors' shapes (metadata may be absent, e.g. official files).
Nothing is silent: one log line per kind of key resized, rebuilt or dropped. Anything else that does not fit
(another depth, width, gamma, GQPE vs LRPE) is left as it is, so :func:`.load.load_pretrained` reports it.
"""
import collections
import logging
import math
import re

import numpy as np

from ..positions import quadratic_relative_indices, relative_position_index

_LOG = logging.getLogger(__name__)
_A = -0.75  # PyTorch's (and Swin's) bicubic coefficient

# levels.<i>.encoder.<j>.gate_unit.<rest>: the per-level tensors whose shapes depend on the window
_KEY = re.compile(r"^levels\.(\d+)\.encoder\.\d+\.gate_unit\.(.+)$")
_DROP = re.compile(r"(^|\.)(shift_mask|attn_mask)$")


def _cubic(x):
    """Keys' cubic convolution kernel with ``A = -0.75`` (PyTorch's cubic_convolution1/2)."""
    x = abs(x)
    if x <= 1.0:
        return ((_A + 2.0) * x - (_A + 3.0)) * x * x + 1.0
    if x < 2.0:
        return ((_A * x - 5.0 * _A) * x + 8.0 * _A) * x - 4.0 * _A
    return 0.0


def bicubic_matrix(n_in, n_out):
    """float64 ``(n_out, n_in)``: ``M @ v`` resizes ``v`` (``n_in``,) as PyTorch's bicubic interpolation with
    ``align_corners=False`` (source ``(o + 0.5) n_in / n_out - 0.5``, taps clamped to ``[0, n_in - 1]``)."""
    M = np.zeros((n_out, n_in), dtype=np.float64)
    for o in range(n_out):
        src = (2 * o + 1) * n_in / (2.0 * n_out) - 0.5  # exact for the centre row of odd sizes
        i0 = math.floor(src)
        t = src - i0
        for tap, weight in zip(range(i0 - 1, i0 + 3), (_cubic(t + 1.0), _cubic(t), _cubic(1.0 - t), _cubic(2.0 - t))):
            M[o, min(max(tap, 0), n_in - 1)] += weight
    return M


def resize_grid(x, axes, size):
    """Bicubic resize of ``x`` along each axis of ``axes`` to ``size`` (separable: one matrix per axis), float64."""
    out = np.asarray(x, dtype=np.float64)
    for axis in axes:
        if out.shape[axis] != size:
            out = np.moveaxis(np.tensordot(bicubic_matrix(out.shape[axis], size), out, axes=([1], [axis])), 0, axis)
    return out


def resize_relative_table(table, win):
    """LRPE ``((2w-1)^2, S)`` -> ``((2w'-1)^2, S)`` for window ``w' = win``: each group's table resized on its
    ``(2w-1) x (2w-1)`` grid of offsets ``(dy, dx)`` (row ``(dy + w-1)(2w-1) + dx + w-1``, as
    ``relative_position_index``)."""
    L, S = table.shape
    side = math.isqrt(L)
    grid = np.asarray(table).reshape(side, side, S)
    return resize_grid(grid, (0, 1), 2 * win - 1).reshape(-1, S).astype(table.dtype)


def resize_token_bias(bias, win):
    """``(1, w^2, 1)`` (or ``(w^2,)``) -> the same with ``w' = win``: resized on the ``w x w`` token grid."""
    w = math.isqrt(int(np.prod(bias.shape)))
    out = resize_grid(np.asarray(bias).reshape(w, w), (0, 1), win)
    shape = (1, win * win, 1) if np.ndim(bias) == 3 else (win * win,)
    return out.reshape(shape).astype(bias.dtype)


def resize_token_pair_map(weight, win):
    """A dense token map ``(1, N, N)`` (gated PoSGU) or ``(N, N)`` (SGU) -> ``N' = win^2``: resized as the 4-D map
    ``(w, w, w, w)`` over (output token ``(y, x)``, input token ``(y, x)``)."""
    N = weight.shape[-1]
    w = math.isqrt(N)
    out = resize_grid(np.asarray(weight).reshape(w, w, w, w), (0, 1, 2, 3), win)
    return out.reshape(weight.shape[:-2] + (win * win, win * win)).astype(weight.dtype)


def _gqpe_rel_indices(arr, win):
    return quadratic_relative_indices(win, generalized=arr.shape[-1] == 5)


def _lrpe_index(arr, win):
    return relative_position_index(win)


def _square(n):
    r = math.isqrt(n) if n > 0 else 0
    return r if r * r == n else None


def _window_of_table(shape):
    side = _square(shape[0]) if len(shape) == 2 else None
    return (side + 1) // 2 if side and side % 2 == 1 else None


# A kind of window-dependent key: its name in the log, the pattern of the key after "gate_unit.", the window of a
# shape (None: not the expected layout, left for load_into_model to report), rebuilt/resized, apply(array, new
# window), and how (for the log line).
Kind = collections.namedtuple("Kind", "name pattern window action apply how")
KINDS = (
    Kind("rel_indices", re.compile(r"^pos\.rel_indices$"),
         lambda s: _square(s[0]) if len(s) == 3 and s[0] == s[1] and s[2] in (3, 5) else None,
         "rebuilt", _gqpe_rel_indices, "GQPE offset features of the target window"),
    Kind("window_relative_position_index", re.compile(r"^pos\.window_relative_position_index$"),
         lambda s: _square(s[0]) if len(s) == 2 and s[0] == s[1] else None,
         "rebuilt", _lrpe_index, "LRPE table index of the target window"),
    Kind("window_relative_position_bias_table", re.compile(r"^pos\.window_relative_position_bias_table$"),
         _window_of_table, "resized", resize_relative_table, "bicubic on the (2w-1)x(2w-1) offset grid per group"),
    Kind("token_proj_n_bias", re.compile(r"^pos\.token_proj_n_bias$"),
         lambda s: _square(s[1]) if len(s) == 3 and s[0] == 1 and s[2] == 1 else None,
         "resized", resize_token_bias, "bicubic on the w x w token grid"),
    Kind("token_proj_n_weight", re.compile(r"^token_proj_n_weight$"),
         lambda s: _square(s[1]) if len(s) == 3 and s[0] == 1 and s[1] == s[2] else None,
         "resized", resize_token_pair_map, "bicubic on the (w, w, w, w) map of token pairs"),
    Kind("proj_list.weight (SGU)", re.compile(r"^proj_list\.\d+\.weight$"),
         lambda s: _square(s[0]) if len(s) == 2 and s[0] == s[1] else None,
         "resized", resize_token_pair_map, "bicubic on the (w, w, w, w) map of token pairs"),
    Kind("proj_list.bias (SGU)", re.compile(r"^proj_list\.\d+\.bias$"),
         lambda s: _square(s[0]) if len(s) == 1 else None,
         "resized", resize_token_bias, "bicubic on the w x w token grid"),
)


def _classify(key, shape):
    """``(kind, level, source window)`` of a window-dependent key, or None."""
    m = _KEY.match(key)
    if not m:
        return None
    for kind in KINDS:
        if kind.pattern.match(m.group(2)):
            w = kind.window(tuple(shape))
            return (kind, int(m.group(1)), w) if w else None
    return None


def weights_windows(state):
    """``{level: window}`` of the weights, read from the shapes of their window-dependent tensors."""
    out = {}
    for key, value in state.items():
        found = _classify(key, np.shape(value))
        if found:
            out.setdefault(found[1], found[2])
    return out


def transfer_windows(state, win_size, log=None):
    """Adapt ``state`` (``{name: np.ndarray}``) to a model whose level ``i`` has windows ``win_size[i]``.

    Returns ``(state, report)``: a new dict (the input is not modified) in which the window-dependent tensors of
    every level whose window differs are rebuilt, resized or dropped (module docstring); ``report`` is
    ``{kind: {"action", "count", "shapes"}}``, empty when nothing changed. ``log`` (default: this module's
    logger at WARNING: the weights were altered) gets one line per kind. Keys that fit nothing here are left as
    they are for :func:`.load.load_into_model` to check.
    """
    log = _LOG.warning if log is None else log
    win_size = list(win_size)
    src = weights_windows(state)
    out = collections.OrderedDict()
    report = collections.OrderedDict()
    for key, value in state.items():
        if _DROP.search(key):
            entry = report.setdefault(key.rsplit(".", 1)[-1], {"action": "dropped", "count": 0, "shapes": {}})
            entry["count"] += 1
            continue
        found = _classify(key, np.shape(value))
        if found:
            kind, level, w = found
            if level < len(win_size) and win_size[level] != w:
                new = kind.apply(np.asarray(value), win_size[level])
                entry = report.setdefault(kind.name, {"action": kind.action, "count": 0, "shapes": {}, "how": kind.how})
                entry["count"] += 1
                entry["shapes"].setdefault((tuple(np.shape(value)), tuple(new.shape)), []).append(level)
                value = new
        out[key] = value
    if report:
        have = [src.get(i) for i in range(len(win_size))]
        log(f"weight transfer: the weights have windows {have} (read from their shapes), the model {win_size}")
        for name, entry in report.items():
            log(_describe(name, entry))
    return out, report


def _describe(name, entry):
    if entry["action"] == "dropped":
        return (f"weight transfer: dropped {entry['count']} x {name} (built by the model for its own windows, "
                f"never loaded)")
    changes = ", ".join(f"{list(a)} -> {list(b)} (level{'s' if len(set(lv)) > 1 else ''} "
                        f"{', '.join(str(v) for v in sorted(set(lv)))})"
                        for (a, b), lv in entry["shapes"].items())
    return f"weight transfer: {entry['action']} {entry['count']} x {name}: {changes}; {entry['how']}"
