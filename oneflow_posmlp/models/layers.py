"""The PosMLP block (channel MLP with a spatial gating unit) and a level of blocks."""
import oneflow as flow
import oneflow.nn as nn

from .drop import DropPath, Dropout
from .windows import shifted_window_mask, window_partition, window_reverse


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
        self.proj_c_e = nn.Linear(dim, self.hidden_dim)
        self.proj_c_s = nn.Linear(self.split_dim, dim)
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

    def forward_gate(self, x, mask=None):
        """``(B, W, N, C) -> (B, W, N, C)``."""
        residual = x
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
