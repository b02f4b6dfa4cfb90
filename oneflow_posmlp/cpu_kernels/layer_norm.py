"""LayerNorm through OneFlow's CPU BatchNorm kernel: a CPU kernel.

Why: in OneFlow 0.9.0 the CPU ``layer_norm`` is a Python composition whose ``(..., C) - (..., 1)`` broadcasts oneDNN
runs with its reference kernel (tens of ms per call; docs/benchmark.md). :class:`LayerNorm` normalises the rows of
``x.reshape(1, M, C)`` as BatchNorm "channels" (batch statistics, biased variance, no running statistics), then
applies ``* weight + bias`` along the last axis. Same parameters (``weight``, ``bias``) and state dict.

Inside a one-process ``nn.Graph`` (local lazy tensors) the ``normalization`` op is not used (OneFlow 0.9.0's
gradient-accumulation pass requires running statistics of a training-mode ``normalization``): there
:func:`_rows_normalized_composed` writes the same normalisation with reductions and broadcasts that keep a trailing
axis. Global tensors split along the channels (tensor parallel) take the model's own form (``models/norm.py``).
Promise: within float rounding of ``nn.LayerNorm`` (tests/test_cpu_kernels_layer_norm.py).
"""
import oneflow as flow

from ..models.norm import LayerNorm as ModelLayerNorm
from ..models.sbp import channels_split
from .device import on_cpu


def _rows_normalized(x, eps):
    """``(..., C)`` local CPU tensor -> each row of ``C`` values normalised to mean 0, variance 1."""
    C = x.shape[-1]
    if x.numel() == 0:  # a rank outside a global tensor's placement (pipeline parallel) holds nothing
        return x
    y = flow._C.normalization(x.reshape(1, -1, C), None, None, None, None, axis=1, epsilon=eps, momentum=0.0,
                              is_training=True)
    return y.reshape(x.shape)


def _rows_normalized_composed(x, eps):
    """:func:`_rows_normalized` with reductions and row broadcasts (no ``normalization`` op): for graphs."""
    x4 = x.reshape(1, -1, x.shape[-1], 1)  # (1, M, C, 1): the broadcasts below keep a trailing axis
    centred = x4 - x4.mean(dim=2, keepdim=True)
    var = (centred * centred).mean(dim=2, keepdim=True)  # biased, as LayerNorm
    return (centred * flow.rsqrt(var + eps)).reshape(x.shape)


def uses_cpu_path(x):
    """True where :class:`LayerNorm` takes the BatchNorm-kernel path: a local CPU tensor, or a global one on a
    CPU placement outside an ``nn.Graph`` whose rows are whole on every rank (not split along the last axis,
    not partial)."""
    if not on_cpu(x):
        return False
    if x.is_global:
        last = flow.sbp.split(x.ndim - 1)
        rows_whole = all(s == flow.sbp.broadcast or (s != last and s != flow.sbp.partial_sum) for s in x.sbp)
        return not x.is_lazy and rows_whole
    return True


class LayerNorm(ModelLayerNorm):
    """The model's LayerNorm, ``(..., C) -> (..., C)``, with the rows normalised by the BatchNorm kernel on CPU."""

    def forward(self, x):  # (no super(): nn.Graph calls via a proxy)
        if len(self.normalized_shape) != 1 or channels_split(x) or not uses_cpu_path(x):
            return ModelLayerNorm.forward(self, x)
        if x.is_global:  # each rank normalises its own whole rows
            y = _rows_normalized(x.to_local(), self.eps).to_global(placement=x.placement, sbp=x.sbp)
        elif x.is_lazy:  # one-process nn.Graph: no normalization op (see the module docstring)
            y = _rows_normalized_composed(x, self.eps)
        else:
            y = _rows_normalized(x, self.eps)
        if self.elementwise_affine:
            y = y * self.weight + self.bias
        return y
