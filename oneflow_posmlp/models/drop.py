"""Stochastic depth (drop path) and dropout for local and global tensors, eager and in ``nn.Graph``.

Both keep the semantics of timm's ``DropPath`` / ``nn.Dropout`` on one process and make them right under
every parallel layout (OneFlow global tensors, SBP):

* **Drop path** keeps or drops a whole residual branch per *sample of the global batch*. The keep mask,
  ``(B,)``, comes either from the training step (:func:`set_drop_path_keep`: one mask per block for the
  micro-batch, drawn from a seeded NumPy generator on every rank alike, so every layout and a resumed run
  draw exactly what one uninterrupted process draws; a graph takes it as an input), or, when none was
  given (a model used on its own), from OneFlow's RNG: a ``broadcast`` draw of the whole ``(B,)`` mask, which
  OneFlow 0.9.0 makes identical on every rank and in every layout, then split like the batch.
* **Dropout** on a global tensor draws its mask with ``flow.rand`` in the tensor's own SBP (``split(0)``
  along the data-parallel axis, ``broadcast`` elsewhere). OneFlow 0.9.0's fused ``dropout`` draws the *same*
  mask on every rank of a ``split(0)`` tensor (measured: both halves of a data-parallel batch get one
  pattern), which would correlate the shards; ``flow.rand`` with ``split(0)`` draws a distinct part per rank
  and agrees across the ranks of a ``broadcast`` axis (tensor parallel). Local tensors keep the fused kernel.

Masks multiply as ``(B, M, 1) * (B, 1, 1)``: oneDNN 0.9.0 runs a broadcast along the last axis of
``(B, ...) * (B, 1, 1, 1)`` with its slow reference kernel.
"""
import numpy as np
import oneflow as flow
import oneflow.nn as nn


def mask_sbp(x):
    """The SBP of a random mask that multiplies global ``x``: ``split(0)`` where ``x`` is split along the batch,
    ``broadcast`` on every other placement axis (split channels or partial sums take the same mask)."""
    return [s if s == flow.sbp.split(0) else flow.sbp.broadcast for s in x.sbp]


def scale_per_sample(x, scale):
    """``x (B, ...) * scale (B,)`` broadcast over all but the batch axis."""
    B = x.shape[0]
    return (x.reshape(B, -1, 1) * scale.reshape(B, 1, 1)).reshape(x.shape)


def sample_keep(x, drop_prob):
    """A ``(B,)`` float keep mask (1 with probability ``1 - drop_prob``) for the samples of ``x``, from OneFlow's
    RNG. For global ``x`` the whole mask is drawn ``broadcast`` (one draw, the same in every layout) and then
    split like ``x``, so the shards of a data-parallel batch get distinct rows."""
    B = x.shape[0]
    if not x.is_global:
        return (flow.rand(B, device=x.device) >= drop_prob).to(x.dtype)
    whole = flow.rand(B, placement=x.placement, sbp=[flow.sbp.broadcast] * len(x.sbp))
    return (whole >= drop_prob).to(x.dtype).to_global(sbp=mask_sbp(x))


def dropout(x, p, training=True):
    """Element-wise dropout of ``x`` (any shape) with independent masks per data-parallel shard."""
    if not training or p <= 0.0:
        return x
    if not x.is_global:
        return nn.functional.dropout(x, p=p, training=True)
    keep = (flow.rand(*x.shape, placement=x.placement, sbp=mask_sbp(x)) >= p).to(x.dtype)
    return x * keep * (1.0 / (1.0 - p))


class Dropout(nn.Module):
    """``nn.Dropout`` for local and global tensors (see :func:`dropout`)."""

    def __init__(self, p=0.0):
        super().__init__()
        self.p = p

    def forward(self, x):
        return dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"


class DropPath(nn.Module):
    """Stochastic depth: ``x (B, ...) -> x * keep[b] / (1 - drop_prob)`` per sample ``b`` in training.

    ``keep`` is the mask the training step set (:func:`set_drop_path_keep`), else drawn by :func:`sample_keep`.
    """

    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = drop_prob
        self.keep = None  # (B,) float 0/1, set per micro-batch by the training step

    def forward(self, x):
        if not self.training or self.drop_prob <= 0.0:
            return x
        keep = self.keep if self.keep is not None else sample_keep(x, self.drop_prob)
        if keep.is_global and keep.placement != x.placement:  # pipeline: the mask travels with the batch
            keep = keep.to_global(placement=x.placement, sbp=mask_sbp(x))
        return scale_per_sample(x, keep.to(x.dtype) * (1.0 / (1.0 - self.drop_prob)))

    def extra_repr(self):
        return f"drop_prob={self.drop_prob}"


def drop_path_modules(model):
    """The model's :class:`DropPath` modules with a non-zero rate, in forward order."""
    return [m for m in model.modules() if isinstance(m, DropPath) and m.drop_prob > 0.0]


def drop_path_keep(rates, global_batch, seed, rows=None):
    """Keep masks for one micro-batch: ``(len(rows), len(rates))`` float32, column ``i`` for the ``i``-th
    drop-path module (rate ``rates[i]``), row per sample of the global batch.

    Drawn from ``np.random.default_rng(seed)`` (``seed``: a sequence such as ``[run seed, update, micro-batch]``)
    for the whole global batch on every rank, then cut to this rank's ``rows`` (default: all). So every
    layout, and a run resumed at any update, gets exactly the masks of one uninterrupted process.
    """
    u = np.random.default_rng(seed).random((global_batch, len(rates)), dtype=np.float32)
    keep = (u >= np.asarray(rates, dtype=np.float32)).astype(np.float32)
    return keep if rows is None else keep[rows]


def set_drop_path_keep(modules, keep):
    """Give each of ``modules`` (from :func:`drop_path_modules`) its column of ``keep`` ``(B, len(modules))``,
    a tensor with the batch's placement and SBP; ``keep=None`` clears them (the modules draw their own)."""
    for i, m in enumerate(modules):
        m.keep = None if keep is None else keep[:, i]
