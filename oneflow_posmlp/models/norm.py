"""LayerNorm that OneFlow 0.9.0 runs fast on CPU.

On CPU, ``nn.LayerNorm`` is a Python composition (mean, var, ``x - mean``, ``* rsqrt``): the CPU
``layer_norm`` kernel is a TODO in 0.9.0, and oneDNN runs the ``(..., C) - (..., 1)`` broadcasts of that
composition with its reference kernel (tens of ms per call on a ``(8, 16, 196, 96)`` activation).
:class:`LayerNorm` computes the same normalisation with the CPU BatchNorm kernel: the rows of
``x.reshape(1, M, C)`` are BatchNorm "channels" over their ``C`` values (batch statistics, biased variance,
no running statistics), then the affine ``* weight + bias`` broadcasts along the last axis, which oneDNN
runs with its fast kernel. Same parameters (``weight``, ``bias``), so state dicts are unchanged; on CUDA,
and for global tensors inside an ``nn.Graph`` (where ``to_local`` is not allowed), the built-in runs.

Under the tensor-parallel ``groups`` plan (``parallel/tensor_parallel.py``) a LayerNorm can take a global tensor
split over ranks along its channels (the SGU's gated chunk): each rank holds some channels of every row, so the
row statistics are reduced across the ranks (:func:`_split_rows_normalized`: the per-token mean and centred
second moment, two scalars per token) and the weight and bias are split like the channels.

Inside a one-process ``nn.Graph`` (local lazy tensors) the BatchNorm kernel is not used: OneFlow 0.9.0's
gradient-accumulation pass requires a training-mode ``normalization`` op to have running statistics and
aborts the graph otherwise (``Check failed ... arg_name: moving_mean`` with ``train.grad_accum_steps > 1``).
There :func:`_rows_normalized_composed` writes the same normalisation with reductions and broadcasts in the
form oneDNN runs fast (``(1, M, C, 1) - (1, M, 1, 1)``): 16 ms forward, 156 ms forward+backward on
``(8, 16, 196, 96)`` (BatchNorm kernel 5 / 40 ms, the built-in 586 / 1145 ms), outputs within 1.2e-6.
"""
import oneflow as flow
import oneflow.nn as nn

from .cpu import channels_split, on_cpu


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


def _reduced(sbp):
    """The SBP of a sum over a split axis (``partial_sum`` there) with the partial sums reduced: ``broadcast``."""
    return [flow.sbp.broadcast if s == flow.sbp.partial_sum else s for s in sbp]


def _split_rows_normalized(x, eps):
    """``(..., C)`` global tensor split over ranks along ``C`` -> rows normalised over all ``C`` channels.

    Each rank sums its own channels and the per-token sums are all-reduced explicitly (``partial_sum ->
    broadcast``): the mean, then the centred second moment, two scalars per token in two small all-reduces (the
    two-pass form of the one-process LayerNorm: no ``E[x^2] - E[x]^2`` cancellation); the activations never
    move. Written with a trailing unit axis (``(..., C, 1) - (..., 1, 1)``), the form oneDNN runs fast on CPU."""
    C = x.shape[-1]
    x5 = x.unsqueeze(-1)  # (..., C, 1)
    mean = x5.sum(dim=-2, keepdim=True)  # (..., 1, 1) partial sums
    mean = mean.to_global(sbp=_reduced(mean.sbp)) / C
    centred = x5 - mean
    var = (centred * centred).sum(dim=-2, keepdim=True)
    var = var.to_global(sbp=_reduced(var.sbp)) / C  # biased, as LayerNorm
    return (centred * flow.rsqrt(var + eps)).squeeze(-1)


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the last axis, ``(..., C) -> (..., C)``, fast on CPU (see the module docstring).

    Matches ``nn.LayerNorm`` within float rounding (3.8e-6 on unit-scale activations, gradients likewise).
    """

    def forward(self, x):
        if len(self.normalized_shape) == 1 and channels_split(x):  # tensor parallel: each rank holds some channels
            y = _split_rows_normalized(x, self.eps)
            return y * self.weight + self.bias if self.elementwise_affine else y
        if len(self.normalized_shape) != 1 or not uses_cpu_path(x):  # (no super(): nn.Graph calls via a proxy)
            return flow.nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        if x.is_global:  # each rank normalises its own whole rows
            y = _rows_normalized(x.to_local(), self.eps).to_global(placement=x.placement, sbp=x.sbp)
        elif x.is_lazy:  # one-process nn.Graph: no normalization op (see the module docstring)
            y = _rows_normalized_composed(x, self.eps)
        else:
            y = _rows_normalized(x, self.eps)
        if self.elementwise_affine:
            y = y * self.weight + self.bias
        return y
