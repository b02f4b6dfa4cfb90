"""The PosMLP block with its gating unit's hidden channels in group-major order: a CPU kernel.

Why: the official channel order ``(v s)`` (channel ``c`` in group ``c % gamma``) makes the token mixing's permutes
move single values, which OneFlow 0.9.0's CPU permute does 15-25x slower than runs of ``V`` values (docs/benchmark.md).
Here ``proj_c_e``'s output rows and ``proj_c_s``'s input columns are gathered in the group-major order ``(s v)``
(:func:`~oneflow_posmlp.models.token_mixing.group_major_order`) when the block runs, so the gating unit sees
``(s v)`` channels: the same sums, permuted. The parameters are not reordered: the state dict, checkpoints and
weights keep the official names, shapes and order. With two chunks ``u`` and ``v`` come from two products with the
halves of the gathered weight (no ``chunk`` copy).

Taken by one-process-per-layout blocks with a PoSGU (``hidden_order``) and whole projections; a tensor-parallel block
(``gate_sbp`` or ``gate_parts`` set) and a tensor outside the CPU run the model's own :meth:`forward_gate`.
"""
import oneflow as flow
import oneflow.nn as nn

from ..models.layers import PosMLPLayer
from .device import on_cpu


class GatheredLinear(nn.Linear):
    """``nn.Linear`` (same parameters) whose call can take its output features in ``out_order`` or its input features
    in ``in_order`` (weight rows or columns gathered): ``(..., in_features) -> (..., out_features)``. A module call,
    so forward hooks (``bench/profile.py``) time it as a Linear."""

    def forward(self, x, out_order=None, in_order=None):  # (no super(): nn.Graph calls via a proxy)
        weight, bias = self.weight, self.bias
        if out_order is not None:
            weight = flow.index_select(weight, 0, out_order)
            bias = None if bias is None else flow.index_select(bias, 0, out_order)
        if in_order is not None:
            weight = flow.index_select(weight, 1, in_order)
        return flow.nn.functional.linear(x, weight, bias)


class GroupMajorPosMLPLayer(PosMLPLayer):
    """:class:`~oneflow_posmlp.models.layers.PosMLPLayer` running its PoSGU on group-major channels (its
    ``proj_c_e``/``proj_c_s`` are :class:`GatheredLinear`); ``forward_gate``: ``(B, W, N, C) -> (B, W, N, C)``."""

    def forward_gate(self, x, mask=None):  # (no super(): nn.Graph calls via a proxy)
        unit = self.gate_unit
        if (not hasattr(unit, "hidden_order") or self.gate_sbp is not None or self.gate_parts > 1
                or not on_cpu(x)):
            return PosMLPLayer.forward_gate(self, x, mask)
        order = self._order_like(x)
        h = self.norm(x)
        if unit.chunks == 2:  # the halves from two products: no chunk copy
            half = self.hidden_dim // 2
            u = self.act(self.proj_c_e(h, out_order=order[:half]))
            gated = unit(u, mask=mask, group_major=True, v=self.act(self.proj_c_e(h, out_order=order[half:])))
        else:
            gated = unit(self.act(self.proj_c_e(h, out_order=order)), mask=mask, group_major=True)
        out = self.proj_c_s(gated, in_order=order[: self.split_dim])  # (the unit called as a module: hooks see it)
        return x + self.drop_path(self.drop(out))

    def _order_like(self, x):
        """The gating unit's group-major order (int64 ``(hidden_dim,)``) where ``x`` lives (device or placement),
        kept per place; no buffer, so the model's buffers stay the official ones."""
        orders = self._group_major_orders  # set by apply_cpu_kernels
        key = str(x.placement) if x.is_global else str(x.device)
        if key not in orders:
            order = self.gate_unit.hidden_order(self.hidden_dim)
            if x.is_global:
                orders[key] = flow.tensor(order, placement=x.placement, sbp=[flow.sbp.broadcast] * len(x.sbp))
            else:
                orders[key] = flow.tensor(order, device=x.device)
        return orders[key]
