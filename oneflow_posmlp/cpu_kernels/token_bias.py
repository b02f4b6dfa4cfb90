"""The absolute token bias of a positional map added with a trailing unit axis: a CPU kernel.

Why: ``(B, W, N, C) + (1, 1, N, 1)`` broadcasts along a non-last axis, which oneDNN (OneFlow 0.9.0, CPU) runs with
its reference kernel; ``(B*W, N, C, 1) + (1, N, 1, 1)`` is the same sum, bit for bit, on its fast kernel
(docs/benchmark.md).
"""
from ..models.token_mixing import GQPE, LRPE, TokenMap
from .device import on_cpu


class TokenBiasOnRows:
    """Mixin over a :class:`~oneflow_posmlp.models.token_mixing.TokenMap`: :meth:`add_bias` in the fast CPU form."""

    def add_bias(self, x):
        """``x + token_proj_n_bias``: x ``(B, W, N, C)``, bias ``(1, N, 1)``."""
        if not on_cpu(x):
            return TokenMap.add_bias(self, x)
        bias = self.token_proj_n_bias
        B, W, N, C = x.shape
        return (x.reshape(B * W, N, C, 1) + bias.reshape(1, N, 1, 1)).reshape(B, W, N, C)


class CpuGQPE(TokenBiasOnRows, GQPE):
    """:class:`~oneflow_posmlp.models.token_mixing.GQPE` with the token bias of :class:`TokenBiasOnRows`."""


class CpuLRPE(TokenBiasOnRows, LRPE):
    """:class:`~oneflow_posmlp.models.token_mixing.LRPE` with the token bias of :class:`TokenBiasOnRows`."""
