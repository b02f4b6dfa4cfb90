"""GELU (exact, erf form) that OneFlow 0.9.0 runs fast on CPU.

OneFlow 0.9.0's CPU ``gelu`` calls the scalar ``erff`` per element and its gradient runs through the generic
broadcast-binary loop with ``erff`` and ``exp`` again: 7.9 ns per value forward and 13.8 ns backward on this
project's CPU, 10-20x PyTorch's vectorized kernel (posmlp_t at batch 4: 0.72 s of a 3.7 s train step against
0.08 s in the official PyTorch code, both measured by ``oneflow_posmlp.bench.profile``). On local CPU tensors
(and each rank's part of a global CPU tensor) :class:`GELU` computes the same function with NumPy's
vectorized float32 ufuncs on the tensor's memory (``Tensor.numpy()`` shares it; the output is a OneFlow tensor written through
its view), in
blocks that stay in the L2 cache: 2.5 ns forward, 3 ns backward per value.

``erf`` is the Abramowitz-Stegun 7.1.26 form (absolute error <= 1.5e-7), the one PyTorch's own vectorized
CPU ``erf`` (``Vectorized<float>::erf``) and therefore its CPU GELU use, so the official code computes the
same approximation on this CPU. With ``a = |x| / sqrt(2)``, ``t = 1 / (1 + p a)``,
``q = t (p1 + p2 t + p3 t^2 + p4 t^3 + p5 t^4) exp(-a^2)`` (``= 1 - erf(a)``):

    gelu(x)  = x Phi(x) = (x + |x| (1 - q)) / 2
    gelu'(x) = Phi(x) + x phi(x),   Phi(x) = (1 + sign(x) (1 - q)) / 2,   phi(x) = exp(-x^2 / 2) / sqrt(2 pi)

The backward recomputes ``q`` from the saved input (as ``nn.GELU``, nothing more is kept). Matches OneFlow's
``gelu`` within 3e-7 absolute on unit-scale inputs (``tests/test_models_activation.py``). Inside an
``nn.Graph``, on CUDA, and for partial-sum global tensors the built-in ``gelu`` runs.
"""
import math

import numpy as np
import oneflow as flow
import oneflow.nn as nn

from .cpu import on_cpu

BLOCK = 1 << 17  # values per NumPy pass: a block and its 3 scratch buffers stay in a 1 MB L2 cache
_P = 0.3275911 / math.sqrt(2.0)  # t = 1 / (1 + p |x| / sqrt 2)
_P1, _P2, _P3, _P4, _P5 = 0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _erfc_abs(x, ax, t, q):
    """Fill ``q`` with ``1 - erf(|x| / sqrt 2)`` (A-S 7.1.26) and ``ax`` with ``|x|`` for the block ``x``;
    returns the scratch ``t``, which then holds ``exp(-x^2 / 2)``."""
    np.abs(x, out=ax)
    np.multiply(ax, _P, out=t)
    np.add(t, 1.0, out=t)
    np.divide(1.0, t, out=t)
    np.multiply(t, _P5, out=q)
    for c in (_P4, _P3, _P2, _P1):
        np.add(q, c, out=q)
        np.multiply(q, t, out=q)
    np.square(x, out=t)
    np.multiply(t, -0.5, out=t)
    np.exp(t, out=t)  # exp(-x^2 / 2)
    np.multiply(q, t, out=q)
    return t


def _blocks(n):
    for start in range(0, n, BLOCK):
        yield start, min(start + BLOCK, n)


def _scratch():
    return np.empty(BLOCK, np.float32), np.empty(BLOCK, np.float32)


def gelu_forward_np(x, out):
    """``out = gelu(x)`` for float32 NumPy arrays of one shape (C-contiguous); returns ``out``."""
    flat, oflat = x.reshape(-1), out.reshape(-1)
    ax, t = _scratch()
    for s, e in _blocks(flat.size):
        n = e - s
        xb, ob = flat[s:e], oflat[s:e]
        _erfc_abs(xb, ax[:n], t[:n], ob)  # ob = q
        np.subtract(1.0, ob, out=ob)
        np.multiply(ob, ax[:n], out=ob)
        np.add(ob, xb, out=ob)
        np.multiply(ob, 0.5, out=ob)
    return out


def gelu_backward_np(x, dy, out):
    """``out = dy * gelu'(x)`` for float32 NumPy arrays of one shape (C-contiguous); returns ``out``."""
    flat, gflat, oflat = x.reshape(-1), dy.reshape(-1), out.reshape(-1)
    ax, t = _scratch()
    for s, e in _blocks(flat.size):
        n = e - s
        xb, ob = flat[s:e], oflat[s:e]
        ex = _erfc_abs(xb, ax[:n], t[:n], ob)  # ob = q, ex = exp(-x^2 / 2)
        np.subtract(1.0, ob, out=ob)
        np.copysign(ob, xb, out=ob)
        np.multiply(ob, 0.5, out=ob)
        np.add(ob, 0.5, out=ob)  # Phi(x)
        np.multiply(ex, xb, out=ex)
        np.multiply(ex, _INV_SQRT_2PI, out=ex)  # x phi(x)
        np.add(ob, ex, out=ob)
        np.multiply(ob, gflat[s:e], out=ob)
    return out


def _local(t):
    t = t.to_local() if t.is_global else t
    return t.contiguous()


def _apply_np(fn, ref, *tensors):
    """``fn(*arrays, out)`` on NumPy views of the local parts of ``tensors`` (``Tensor.numpy()`` waits for each
    and shares its memory), writing into a new tensor from OneFlow's allocator (its memory is reused from step to
    step, so no fresh pages are faulted in), placed as ``ref`` (local, or global with its SBP). Every array is
    a view of a tensor that outlives the call: NumPy never owns memory OneFlow reads (arrays wrapped by
    ``flow.from_numpy`` are released from OneFlow's threads, which crashed the test suite)."""
    local = [_local(t) for t in tensors]
    out = flow.empty(*local[0].shape, dtype=flow.float32, device=local[0].device)
    fn(*(t.numpy() for t in local), out.numpy())
    return out.to_global(placement=ref.placement, sbp=ref.sbp) if ref.is_global else out


class _NumpyGelu(flow.autograd.Function):
    """(No Python attribute is kept on ``ctx``: OneFlow 0.9.0 crashes later when a Function's context holds
    one.)"""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return _apply_np(gelu_forward_np, x, x)

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        return _apply_np(gelu_backward_np, x, x, dy)


MIN_VALUES = 1 << 17  # below, waiting for the input (~0.1-0.5 ms per call) costs more than the scalar kernel


def uses_numpy_path(x):
    """True where :class:`GELU` computes with NumPy: eager float32 CPU tensors of at least :data:`MIN_VALUES`
    values (per rank), local or global without a partial-sum axis (each rank's part is then a slice of the
    whole, and GELU is elementwise)."""
    if x.dtype != flow.float32 or x.is_lazy or not on_cpu(x):
        return False
    if x.numel() // (x.placement.ranks.size if x.is_global else 1) < MIN_VALUES:
        return False
    return not x.is_global or all(s != flow.sbp.partial_sum for s in x.sbp)


def gelu(x):
    """Exact GELU, ``(...) -> (...)``, fast on CPU (see the module docstring)."""
    if uses_numpy_path(x):
        return _NumpyGelu.apply(x)
    return flow.nn.functional.gelu(x)


class GELU(nn.GELU):
    """``nn.GELU`` (no parameters, same module type for hooks and exports) computed by :func:`gelu`."""

    def forward(self, x):  # (no super(): nn.Graph calls via a proxy)
        return gelu(x)
