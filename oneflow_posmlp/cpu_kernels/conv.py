"""Conv2d with its bias added after a bias-free convolution: a CPU kernel.

Why: OneFlow 0.9.0's CPU ``bias_add`` over ``(B, C, H, W)`` takes oneDNN's reference kernel (a broadcast along a
non-last axis), about 250x slower than ``y + bias.reshape(1, C, 1, 1)`` (docs/benchmark.md). Same parameters,
same sums.
"""
import oneflow.nn as nn

from .device import on_cpu


class Conv2d(nn.Conv2d):
    """``nn.Conv2d``, ``(B, C_in, H, W) -> (B, C_out, H', W')``, whose bias is added apart on CPU."""

    def forward(self, x):  # (no super(): nn.Graph calls via a proxy)
        if self.bias is None or not on_cpu(x) or self.channel_pos != "channels_first":
            return self._conv_forward(x, self.weight, self.bias)
        return self._conv_forward(x, self.weight, None) + self.bias.reshape(1, -1, 1, 1)
