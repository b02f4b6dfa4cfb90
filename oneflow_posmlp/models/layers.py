"""The PosMLP block (channel MLP with a spatial gating unit) and a level of blocks."""
import oneflow as flow
import oneflow.nn as nn

from .cpu import on_cpu
from .drop import DropPath, Dropout
from .windows import shifted_window_mask, window_partition, window_reverse


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state dict) that can run with its output features or its input
    features taken in another order: ``forward(x, out_order=idx)`` is ``linear(x)[..., idx]`` and
    ``forward(x, in_order=idx)`` is ``linear`` of ``x`` whose features are ``x_official[..., idx]``, computed by
    gathering the weight (and bias) rows or columns. ``(..., in_features) -> (..., out_features)``."""

    def forward(self, x, out_order=None, in_order=None):
        weight, bias = self.weight, self.bias
        if out_order is not None:
            weight = flow.index_select(weight, 0, out_order)
            bias = None if bias is None else flow.index_select(bias, 0, out_order)
        if in_order is not None:
            weight = flow.index_select(weight, 1, in_order)
        return flow.nn.functional.linear(x, weight, bias)


class PosMLPLayer(nn.Module):
    """One PosMLP block: ``x + DropPath(proj_c_s(gate_unit(act(proj_c_e(norm(x))))))``.

    Windowed input ``(B, W, N, C)`` when ``shift_size == 0`` (the level partitions once), or a map
    ``(B, H, W, C)`` when the block shifts its windows: cyclic shift by ``shift_size``, partition,
    mask token pairs that were not neighbours before the shift, reverse, shift back (Swin).
    """

    # Tensor-parallel plan, applied by parallel/tensor_parallel.py (which fails if a name here matches nothing):
    # proj_c_e split by output columns, proj_c_s by input rows, and the block output brought to `gate_sbp` after
    # proj_c_s (the all-reduce of its partial sums). Then, by dist.tensor_parallel_mode: "gather" brings the hidden
    # activations to `gate_sbp` too, before the gating unit, which runs whole on every rank; "groups" runs the
    # gating unit split by channel groups (the unit's `tensor_parallel_groups` gives the channel order in which
    # proj_c_e's rows and proj_c_s's columns are stored, and its per-group parameters), the degree in `gate_parts`.
    tensor_parallel_plan = {"columns": ("proj_c_e",), "rows": ("proj_c_s",), "gather": "gate_sbp",
                            "groups": ("gate_unit", "gate_parts")}

    def __init__(self, dim, win_size, gate_unit, chunks=2, mlp_ratio=4.0, drop=0.0, drop_path=0.0,
                 act_layer=nn.GELU, norm_layer=nn.LayerNorm, layer_idx=0, shift_size=0, feature_size=None,
                 **gate_kwargs):
        super().__init__()
        self.dim = dim
        self.win_size = win_size
        self.shift_size = shift_size
        self.hidden_dim = int(mlp_ratio * dim)
        self.split_dim = self.hidden_dim // chunks
        self.norm = norm_layer(dim)
        self.proj_c_e = Linear(dim, self.hidden_dim)
        self.proj_c_s = Linear(self.split_dim, dim)
        self.gate_unit = gate_unit(dim=self.hidden_dim, win_size=win_size, chunks=chunks, norm_layer=norm_layer,
                                   layer_idx=layer_idx, **gate_kwargs)
        self.act = act_layer()
        # The gather point of tensor_parallel_plan, set by parallel/tensor_parallel.py: the SBP that activations
        # with whole channel vectors (the gating unit's input, the block's output) are brought to explicitly.
        # None (the default) leaves tensors as they are.
        self.gate_sbp = None
        # The tensor-parallel degree of the "groups" plan (set by parallel/tensor_parallel.py): > 1 runs the gating
        # unit on this rank's channel groups only; 1 (the default) on whole channel vectors.
        self.gate_parts = 1
        self.drop = Dropout(drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        if shift_size > 0:
            H, W = feature_size
            mask = shifted_window_mask(H, W, win_size, shift_size)
            self.register_buffer("shift_mask", flow.tensor(mask), persistent=False)
        else:
            self.shift_mask = None
        # On CPU the block runs the gating unit with its hidden channels in group-major order (_gate_group_major);
        # group_major = False keeps the official order everywhere (the ONNX export does). The order is no buffer:
        # the model's buffers stay the official ones.
        self.group_major = True
        self._hidden_order = (self.gate_unit.hidden_order(self.hidden_dim)
                              if hasattr(self.gate_unit, "hidden_order") else None)
        self._order_tensors = {}

    def forward_gate(self, x, mask=None):
        """``(B, W, N, C) -> (B, W, N, C)``."""
        residual = x
        if self._group_major(x):
            return residual + self.drop_path(self.drop(self._gate_group_major(self.norm(x), mask)))
        x = self.act(self.proj_c_e(self.norm(x)))
        if self.gate_parts > 1:  # tensor parallel by channel groups: each rank gates its own groups' channels
            x = self.gate_unit(x, mask=mask, parts=self.gate_parts)
        else:
            if self.gate_sbp is not None:
                x = x.to_global(sbp=self.gate_sbp)
            x = self.gate_unit(x, mask=mask)
        x = self.proj_c_s(x)
        if self.gate_sbp is not None:
            x = x.to_global(sbp=self.gate_sbp)
        return residual + self.drop_path(self.drop(x))

    def _group_major(self, x):
        """Group-major hidden channels: CPU tensors, a PoSGU, whole (not tensor-parallel) projections."""
        return self.group_major and self._hidden_order is not None and self.gate_sbp is None and on_cpu(x)

    def _order_like(self, x):
        """The group-major order as an int64 tensor where ``x`` lives (local device or global placement)."""
        key = str(x.placement) if x.is_global else str(x.device)
        if key not in self._order_tensors:
            if x.is_global:
                t = flow.tensor(self._hidden_order, placement=x.placement,
                                sbp=[flow.sbp.broadcast] * len(x.sbp))
            else:
                t = flow.tensor(self._hidden_order, device=x.device)
            self._order_tensors[key] = t
        return self._order_tensors[key]

    def _gate_group_major(self, x, mask):
        """``proj_c_s(gate_unit(act(proj_c_e(x))))`` with the hidden channels in the gating unit's group-major
        order ``(s v)``: ``proj_c_e``'s output rows and ``proj_c_s``'s input columns are gathered in that order
        (the same sums; parameters and state dict unchanged), so the token mixing's permutes move runs of
        ``V`` channels instead of single values (OneFlow 0.9.0's CPU permute: 1 ms instead of 17-28 ms on a
        ``(8, 196, 768)`` activation). With two chunks, ``u`` and ``v`` come from two products with the halves of
        the gathered weight instead of one product and a ``chunk``: the same sums, without copying the halves out
        and without the chunk's gradient written through zero-filled full-width buffers (posmlp_t train step,
        batch 4, one core, 5 interleaved A/B runs: CPU time 3001 vs 3045 ms on average, inside the runs' spread;
        peak memory 1667 vs 1765 MB in every run).
        ``(B, W, N, C) -> (B, W, N, C)``."""
        order = self._order_like(x)
        if self.gate_unit.chunks == 2:
            half = self.hidden_dim // 2
            u = self.act(self.proj_c_e(x, out_order=order[:half]))
            v = self.act(self.proj_c_e(x, out_order=order[half:]))
            x = self.gate_unit(u, mask=mask, group_major=True, v=v)
        else:
            x = self.act(self.proj_c_e(x, out_order=order))
            x = self.gate_unit(x, mask=mask, group_major=True)
        return self.proj_c_s(x, in_order=order[: self.split_dim])

    def forward(self, x):
        if self.shift_size == 0:
            return self.forward_gate(x)
        _, H, W, _ = x.shape
        s, w = self.shift_size, self.win_size
        x = flow.roll(x, shifts=(-s, -s), dims=(1, 2))
        x = window_reverse(self.forward_gate(window_partition(x, w, w), mask=self.shift_mask), H, W, w, w)
        return flow.roll(x, shifts=(s, s), dims=(1, 2))


class PosMLPLevel(nn.Module):
    """A level: optional downsampling ``pool`` then ``depth`` blocks over windows of ``win_size``.

    ``(B, C_prev, H_prev, W_prev) -> (B, C, H, W)``.
    """

    def __init__(self, blocks, win_size, pool=None):
        super().__init__()
        self.win_size = win_size
        self.pool = pool if pool is not None else nn.Identity()
        self.encoder = nn.Sequential(*blocks)
        self.shifted = any(b.shift_size > 0 for b in blocks)

    def forward(self, x):
        x = self.pool(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        if self.shifted:
            # Blocks take maps and partition themselves (alternating plain and shifted windows).
            for block in self.encoder:
                x = block(x) if block.shift_size else self._windowed(block, x)
        else:
            x = self._windowed(self.encoder, x)
        return x.permute(0, 3, 1, 2)

    def _windowed(self, fn, x):
        _, H, W, _ = x.shape
        w = self.win_size
        return window_reverse(fn(window_partition(x, w, w)), H, W, w, w)
