"""Spatial gating units: PoSGU (the paper's) and gMLP's SGU (the dense baseline).

Both take the hidden activations of a block, ``(B, W, N, D)`` (batch, windows, tokens per window,
hidden channels), split them into ``u`` and ``v`` and return ``mix(u) * v``: ``(B, W, N, D / chunks)``.
"""
import numpy as np
import oneflow as flow
import oneflow.nn as nn
from flowvision.layers import trunc_normal_

from .token_mixing import GQPE, LRPE, dense_mix, group_major_order


class PoSGU(nn.Module):
    """Positional spatial gating unit.

    ``u, v = x.chunk(2)`` (``chunks == 2``) or ``u = v = x`` (``chunks == 1``); ``u`` is token-mixed
    group-wise by a relative positional map, GQPE (``quadratic=True``) or LRPE, plus (``pos_only=False``)
    a learned dense ``N x N`` map ``token_proj_n_weight``; the output is ``u * v``.

    Note: the official code creates ``token_proj_n_weight`` for GQPE with ``pos_only=False`` but never
    uses it; here it is added to the (post-softmax) GQPE map, as the paper's gated form describes.
    """

    def __init__(self, dim, win_size, chunks=2, quadratic=True, gamma=16, pos_only=True, generalized=True,
                 symmetric=True, absolute_bias=True, **unused):
        super().__init__()
        if chunks not in (1, 2):
            raise ValueError(f"PoSGU supports chunks 1 or 2, got chunks={chunks}")
        self.chunks = chunks
        self.seq_len = win_size * win_size
        self.quadratic = quadratic
        self.pos_only = pos_only
        if quadratic:
            self.pos = GQPE(win_size, gamma=gamma, generalized=generalized, symmetric=symmetric,
                            absolute_bias=absolute_bias)
        else:
            self.pos = LRPE(win_size, gamma=gamma, absolute_bias=absolute_bias)
        if not pos_only:
            self.token_proj_n_weight = nn.Parameter(flow.zeros(1, self.seq_len, self.seq_len))
            trunc_normal_(self.token_proj_n_weight, std=1e-6)

    def hidden_order(self, dim):
        """int64 ``(dim,)``: the input channels in group-major order (each half ``(v s) -> (s v)``,
        :func:`~.token_mixing.group_major_order`), for :meth:`forward` with ``group_major=True``."""
        half = group_major_order(dim // self.chunks, self.pos.gamma)
        return np.concatenate([half + i * (dim // self.chunks) for i in range(self.chunks)])

    def tensor_parallel_groups(self, dim, parts):
        """The tensor-parallel ``groups`` plan of this unit over ``parts`` ranks (``parallel/tensor_parallel.py``):
        ``(in_order, out_order, split)``. Rank ``r`` takes the groups ``[r S/parts, (r+1) S/parts)`` of ``u`` and
        the channels of ``v`` they gate: ``in_order`` (int64 ``(dim,)``) lists the official input channels so
        that block ``r`` of it holds rank ``r``'s ``u`` then ``v`` channels, each group-major; ``out_order``
        (``(dim / chunks,)``) the output channels, rank by rank; ``split`` ``{parameter name: axis}`` the
        per-group positional parameters, split by groups. Raises ValueError unless ``parts`` divides ``gamma``."""
        S = self.pos.gamma
        if S % parts:
            raise ValueError(f"gamma {S} (the gating unit's channel groups) does not split over {parts} ranks")
        half = dim // self.chunks
        blocks = group_major_order(half, S).reshape(parts, half // parts)  # rank r: its groups, group-major
        in_order = np.concatenate([b + i * half for b in blocks for i in range(self.chunks)])
        split = {f"pos.{name}": axis for name, axis in self.pos.group_axes.items()}
        return in_order, blocks.reshape(-1), split

    def forward(self, x, mask=None, group_major=False, parts=1, v=None):
        """x: ``(B, W, N, D)``; mask: ``(W, N, N)`` or None -> ``(B, W, N, D / chunks)``.

        ``group_major``: the channels of each half of ``x``, and of the output, are in the order ``(s v)``
        (``x[..., self.hidden_order(D)]``) instead of the official ``(v s)``; same values, permuted.
        ``parts > 1``: ``x`` is split over ``parts`` tensor-parallel ranks by channel groups, its channels in
        the order ``x[..., in_order]`` of :meth:`tensor_parallel_groups` (the output in ``out_order``).
        ``v``: the gate half given apart, ``(B, W, N, D / 2)``; ``x`` is then the gated half ``u``."""
        if v is not None:
            return self.gate(x, v, mask, group_major)
        if parts > 1:
            u, v = (x, x) if self.chunks == 1 else rank_chunks(x, parts, 2)
            group_major = True
        else:
            u, v = (x, x) if self.chunks == 1 else x.chunk(2, dim=-1)
        return self.gate(u, v, mask, group_major)

    def gate(self, u, v, mask=None, group_major=False):
        """``mix(u) * v`` for the halves ``u``, ``v``: ``(B, W, N, D / chunks)`` each, in the channel order that
        ``group_major`` names."""
        gate = None if self.pos_only else self.token_proj_n_weight
        if group_major:
            return self.pos(u, mask=mask, gate=gate, group_major=True) * v
        return self.pos(u, mask=mask, gate=gate) * v  # (a frozen map of the ONNX export takes no channel order)


def rank_chunks(x, parts, chunks):
    """``(..., D)`` whose channels are ``parts`` rank blocks, each ``[chunk 0 | chunk 1 | ...]`` -> the
    ``chunks`` tensors ``(..., D / chunks)``, each with the ranks' channels in rank order. On a tensor split over
    ``parts`` ranks along its channels, every rank keeps its own channels (no communication)."""
    *lead, D = x.shape
    xs = x.reshape(*lead, parts, chunks, D // (parts * chunks))
    lead_axes = (slice(None),) * len(lead) + (slice(None),)  # (..., parts, [j], channels)
    return [xs[lead_axes + (j, slice(None))].reshape(*lead, D // chunks) for j in range(chunks)]


class SGU(nn.Module):
    """gMLP's spatial gating unit (official ``SGU``): ``u = LayerNorm(u)``, dense token projection,
    ``u * v``; for ``chunks > 2`` the gate is applied in a chain over the chunks."""

    def __init__(self, dim, win_size, chunks=2, norm_layer=nn.LayerNorm, layer_idx=None, **unused):
        super().__init__()
        if chunks < 2:
            raise ValueError(f"SGU needs chunks >= 2, got chunks={chunks}")
        self.chunks = chunks
        self.gate_dim = dim // chunks
        self.pad_dim = dim % chunks
        seq_len = win_size * win_size
        bias = layer_idx <= 25 if layer_idx else True  # as the official code
        self.proj_list = nn.Sequential(*[nn.Linear(seq_len, seq_len, bias=bias) for _ in range(chunks - 1)])
        self.norm_list = nn.Sequential(*[norm_layer(self.gate_dim) for _ in range(chunks - 1)])

    def init_weights(self):
        """gMLP initialisation: near-zero spatial weights and unit bias, so the unit starts as ``v``."""
        for proj in self.proj_list:
            nn.init.normal_(proj.weight, std=1e-6)
            if proj.bias is not None:
                nn.init.ones_(proj.bias)

    def tensor_parallel_groups(self, dim, parts):
        """The tensor-parallel ``groups`` plan over ``parts`` ranks (see :meth:`PoSGU.tensor_parallel_groups`):
        rank ``r`` takes channels ``[r G/parts, (r+1) G/parts)`` of every chunk (``G = dim // chunks``; the dense
        token map is shared by all channels), its LayerNorms' weights split alike; the LayerNorm statistics are
        reduced over the ranks (``models/norm.py``). Raises ValueError unless ``parts`` divides ``G`` and
        ``chunks`` divides ``dim``."""
        G = self.gate_dim
        if self.pad_dim or G % parts:
            raise ValueError(f"the gating unit's {dim} channels in {self.chunks} chunks of {G} do not split "
                             f"evenly over {parts} ranks")
        b = G // parts
        in_order = np.concatenate([j * G + r * b + np.arange(b) for r in range(parts) for j in range(self.chunks)])
        split = {f"norm_list.{i}.{name}": 0 for i in range(self.chunks - 1) for name in ("weight", "bias")}
        return in_order, np.arange(G), split

    def forward(self, x, mask=None, parts=1):
        """x: ``(B, W, N, D)`` -> ``(B, W, N, D // chunks)``; ``parts > 1``: split over tensor-parallel ranks in
        the order of :meth:`tensor_parallel_groups`."""
        if parts > 1:
            parts = rank_chunks(x, parts, self.chunks)
        else:
            if self.pad_dim:
                x = x[..., : x.shape[-1] - self.pad_dim]
            parts = x.chunk(self.chunks, dim=-1)
        u = parts[0]
        for i in range(self.chunks - 1):
            u = dense_mix(self.proj_list[i], self.norm_list[i](u), mask) * parts[i + 1]
        return u


GATE_UNITS = {"posgu": PoSGU, "sgu": SGU}
