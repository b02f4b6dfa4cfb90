"""LayerNorm over the last axis that also runs split over tensor-parallel ranks along its channels.

Under the tensor-parallel ``groups`` plan (``parallel/tensor_parallel.py``) a LayerNorm can take a global tensor
split along its channels (the SGU's gated chunk): each rank holds some channels of every row, so the row
statistics are reduced across the ranks (:func:`_split_rows_normalized`: the per-token mean and centred second
moment, two scalars per token) and the weight and bias are split like the channels. Every other input takes
OneFlow's ``layer_norm``.
"""
import oneflow as flow
import oneflow.nn as nn

from .sbp import channels_split


def _reduced(sbp):
    """The SBP of a sum over a split axis (``partial_sum`` there) with the partial sums reduced: ``broadcast``."""
    return [flow.sbp.broadcast if s == flow.sbp.partial_sum else s for s in sbp]


def _split_rows_normalized(x, eps):
    """``(..., C)`` global tensor split over ranks along ``C`` -> rows normalised over all ``C`` channels.

    Each rank sums its own channels and the per-token sums are all-reduced explicitly (``partial_sum ->
    broadcast``): the mean, then the centred second moment (the two-pass form: no ``E[x^2] - E[x]^2``
    cancellation); the activations never move. Written with a trailing unit axis (``(..., C, 1) - (..., 1, 1)``)."""
    C = x.shape[-1]
    x5 = x.unsqueeze(-1)  # (..., C, 1)
    mean = x5.sum(dim=-2, keepdim=True)  # (..., 1, 1) partial sums
    mean = mean.to_global(sbp=_reduced(mean.sbp)) / C
    centred = x5 - mean
    var = (centred * centred).sum(dim=-2, keepdim=True)
    var = var.to_global(sbp=_reduced(var.sbp)) / C  # biased, as LayerNorm
    return (centred * flow.rsqrt(var + eps)).squeeze(-1)


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the last axis, ``(..., C) -> (..., C)``; same parameters and state dict."""

    def forward(self, x):  # (no super(): nn.Graph calls via a proxy)
        if len(self.normalized_shape) == 1 and channels_split(x):  # tensor parallel: each rank holds some channels
            y = _split_rows_normalized(x, self.eps)
            return y * self.weight + self.bias if self.elementwise_affine else y
        return flow.nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
