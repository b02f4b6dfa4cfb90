"""Exact GELU (erf form) computed with NumPy's vectorized float32 ufuncs: a CPU kernel.

Why: OneFlow 0.9.0's CPU ``gelu`` calls the scalar ``erff`` per element, forward and backward, about 10x slower
than a vectorized kernel (docs/benchmark.md). On eager float32 CPU tensors (local, or each rank's part of a global
one without a partial-sum axis) :func:`gelu` writes ``gelu(x)`` through NumPy views of OneFlow-allocated outputs
(``Tensor.numpy()`` shares the memory); in training the forward also writes ``gelu'(x)`` and keeps it instead of
``x``, so the backward is one product ``dy * gelu'(x)``. Inference computes ``gelu(x)`` alone.

``erf`` is the Abramowitz-Stegun 7.1.26 form (absolute error <= 1.5e-7), the one PyTorch's vectorized CPU ``erf``
uses. With ``a = |x| / sqrt(2)``, ``t = 1 / (1 + p a)``, ``q = t (p1 + p2 t + ... + p5 t^4) exp(-a^2)``
(``= 1 - erf(a)``)::

    gelu(x)  = x Phi(x) = (x + |x| (1 - q)) / 2
    gelu'(x) = Phi(x) + x phi(x),   Phi(x) = (1 + sign(x) (1 - q)) / 2,   phi(x) = exp(-x^2 / 2) / sqrt(2 pi)

Promise: within 3e-7 of OneFlow's ``gelu`` on unit-scale inputs (tests/test_cpu_kernels_gelu.py). Inside an
``nn.Graph``, on CUDA, below :data:`MIN_VALUES` values and for partial-sum global tensors the built-in runs.
"""
import math

import numpy as np
import oneflow as flow
import oneflow.nn as nn

from .device import on_cpu

BLOCK = 1 << 17  # values per NumPy pass: the fastest of 2^15-2^18 (smaller blocks pay each ufunc call's overhead)
_P = 0.3275911 / math.sqrt(2.0)  # t = 1 / (1 + p |x| / sqrt 2)
_P1, _P2, _P3, _P4, _P5 = 0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SIGN_BIT = np.int32(-(1 << 31))  # 0x80000000


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


def _gelu_from(x, ax, r, out):
    """``out = gelu(x) = (x + |x| r) / 2`` from ``ax = |x|`` and ``r = erf(|x| / sqrt 2)``."""
    np.multiply(r, ax, out=out)
    np.add(out, x, out=out)
    np.multiply(out, 0.5, out=out)


def gelu_forward_np(x, out):
    """``out = gelu(x)`` for float32 NumPy arrays of one shape (C-contiguous); returns ``out``."""
    flat, oflat = x.reshape(-1), out.reshape(-1)
    ax, t = _scratch()
    for s, e in _blocks(flat.size):
        n = e - s
        xb, ob = flat[s:e], oflat[s:e]
        _erfc_abs(xb, ax[:n], t[:n], ob)  # ob = q
        np.subtract(1.0, ob, out=ob)  # erf(|x| / sqrt 2)
        _gelu_from(xb, ax[:n], ob, ob)
    return out


def _derivative(x, r, ex, scratch):
    """``r <- gelu'(x) = Phi(x) + x phi(x)`` from ``r = erf(|x| / sqrt 2)`` and ``ex = exp(-x^2 / 2)`` (``ex``
    and ``scratch`` are overwritten). ``Phi(x) = 1/2 + copysign(r / 2, x)``, the sign bit copied with integer ops
    on the bits (faster than ``np.copysign``)."""
    np.multiply(r, 0.5, out=r)
    bits = scratch.view(np.int32)
    np.bitwise_and(x.view(np.int32), _SIGN_BIT, out=bits)
    np.bitwise_or(r.view(np.int32), bits, out=r.view(np.int32))
    np.add(r, 0.5, out=r)  # Phi(x)
    np.multiply(ex, x, out=ex)
    np.multiply(ex, _INV_SQRT_2PI, out=ex)  # x phi(x)
    np.add(r, ex, out=r)


def gelu_forward_and_derivative_np(x, out, dout):
    """``out = gelu(x)`` and ``dout = gelu'(x)`` in one pass over ``x`` (float32, one shape, C-contiguous): the
    training forward keeps ``dout`` instead of ``x``, so the backward is one product ``dy * dout`` (no second
    erf, and no more memory than saving the input). ``out`` equals :func:`gelu_forward_np`'s bit for bit.
    Returns ``out, dout``."""
    flat, oflat, dflat = x.reshape(-1), out.reshape(-1), dout.reshape(-1)
    ax, t = _scratch()
    for s, e in _blocks(flat.size):
        n = e - s
        xb, ob, db = flat[s:e], oflat[s:e], dflat[s:e]
        ex = _erfc_abs(xb, ax[:n], t[:n], db)  # db = q, ex = exp(-x^2 / 2)
        np.subtract(1.0, db, out=db)  # erf(|x| / sqrt 2)
        _gelu_from(xb, ax[:n], db, ob)
        _derivative(xb, db, ex, ax[:n])
    return out, dout


def _local(t):
    t = t.to_local() if t.is_global else t
    return t.contiguous()


def _apply_np(fn, ref, *tensors, outputs=1):
    """``fn(*arrays, *outs)`` on NumPy views of the local parts of ``tensors`` (``Tensor.numpy()`` waits for each
    and shares its memory), writing into ``outputs`` new tensors from OneFlow's allocator (their memory is reused
    from step to step, so no fresh pages are faulted in), placed as ``ref`` (local, or global with its SBP).
    Every array is a view of a tensor that outlives the call: NumPy never owns memory OneFlow reads (arrays
    wrapped by ``flow.from_numpy`` are released from OneFlow's threads, which crashed the test suite). Returns
    the output tensor, or a tuple of them when ``outputs > 1``."""
    local = [_local(t) for t in tensors]
    outs = [flow.empty(*local[0].shape, dtype=flow.float32, device=local[0].device) for _ in range(outputs)]
    fn(*(t.numpy() for t in local), *(o.numpy() for o in outs))
    if ref.is_global:
        outs = [o.to_global(placement=ref.placement, sbp=ref.sbp) for o in outs]
    return outs[0] if outputs == 1 else tuple(outs)


class _NumpyGelu(flow.autograd.Function):
    """The training GELU: the forward computes ``gelu(x)`` and ``gelu'(x)`` together and keeps the derivative,
    the backward is ``dy * gelu'(x)`` (OneFlow's own product). (No Python attribute is kept on ``ctx``: OneFlow
    0.9.0 crashes later when a Function's context holds one.)"""

    @staticmethod
    def forward(ctx, x):
        y, d = _apply_np(gelu_forward_and_derivative_np, x, x, outputs=2)
        ctx.save_for_backward(d)
        return y

    @staticmethod
    def backward(ctx, dy):
        (d,) = ctx.saved_tensors
        return dy * d


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
    """Exact GELU, ``(...) -> (...)``: NumPy where :func:`uses_numpy_path`, else OneFlow's ``gelu``."""
    if uses_numpy_path(x):
        if x.requires_grad and flow.is_grad_enabled():
            return _NumpyGelu.apply(x)
        return _apply_np(gelu_forward_np, x, x)  # inference: no derivative
    return flow.nn.functional.gelu(x)


class GELU(nn.GELU):
    """``nn.GELU`` computed by :func:`gelu` (no parameters; an ``nn.GELU`` for hooks and exports)."""

    def forward(self, x):  # (no super(): nn.Graph calls via a proxy)
        return gelu(x)
