"""Token mixing of the positional spatial gating unit (PoSGU), group-wise over ``gamma`` channel groups.

Notation (paper, Sec. 3): a window holds ``N = win_size**2`` tokens; the gated half ``u`` of the hidden
channels has ``C = V * S`` channels split as ``(v s)`` with ``s = gamma`` innermost, so channel ``c``
belongs to group ``c % gamma``. Each group ``s`` mixes tokens with its own ``N x N`` map ``P[s]``::

    out[b, w, m, v*S + s] = sum_n P[w?, s, m, n] * u[b, w, n, v*S + s] + bias[m]

The maps come from relative positions:

- :class:`GQPE` (generalized quadratic positional encoding, O(1) parameters per group): a 2-D Gaussian
  over the relative offset, ``P[s] = softmax_n(-1/2 (d - mu_s)^T Sigma_s^{-1} (d - mu_s))``, with a
  symmetric ``Sigma^{-1} = A A^T``, a free ``Sigma^{-1}`` or the isotropic form (``generalized=False``).
- :class:`LRPE` (learnable relative positional encoding, O(N) parameters per group): a bias table
  indexed by the relative offset, Swin-style.
- :func:`dense_mix`: the gMLP SGU baseline, a dense learned ``N x N`` map (O(N^2) parameters).

Parameter and buffer names equal the official PyTorch modules (``QuaMap`` / ``LearnedPosMap``), so
official state dicts load strictly.
"""
import numpy as np
import oneflow as flow
import oneflow.nn as nn
from flowvision.layers import trunc_normal_

from ..positions import quadratic_relative_indices, relative_position_index  # noqa: F401  (re-exported)
from .sbp import channels_split

# Added to the pre-softmax score of token pairs in different regions of a shifted window. exp() of it
# underflows to exactly 0 in fp32, and it is representable in fp16.
MASK_NEG = -1.0e4


def group_mix(token_map: flow.Tensor, x: flow.Tensor, group_major: bool = False) -> flow.Tensor:
    """Group-wise token mixing with batched matmuls.

    Args:
        token_map: ``(Wm, S, N, N)`` with ``Wm == 1`` (shared by all windows) or ``Wm == W``.
        x: ``(B, W, N, C)`` with ``C = V * S``, channels split as ``(v s)`` (the official order), or as
            ``(s v)`` when ``group_major`` (:func:`group_major_order`: each group's channels contiguous, the order
            of the tensor-parallel ``groups`` plan and of the CPU kernels, whose permutes then move runs of ``V``
            values; docs/model.md).
    Returns:
        ``(B, W, N, C)`` in the channel order of ``x``:
        ``out[b, w, m, (v s)] = sum_n token_map[w, s, m, n] * x[b, w, n, (v s)]``.
    """
    B, W, N, C = x.shape
    Wm, S = token_map.shape[0], token_map.shape[1]
    V = C // S
    if group_major and Wm > 1 and channels_split(x):
        return _group_mix_groups_first(token_map, x)
    channels, s_axis, v_axis = ((S, V), 0, 1) if group_major else ((V, S), 1, 0)  # the channel axis, split
    if Wm == 1:
        perm = (2 + s_axis, 1, 0, 2 + v_axis)  # (B*W, N, channels) -> (S, N, B*W, V)
        xs = x.reshape(B * W, N, *channels).permute(*perm).reshape(S, N, B * W * V)
        out = flow.bmm(token_map[0], xs)  # (S, N, B*W*V)
        return out.reshape(S, N, B * W, V).permute(*_inverse(perm)).reshape(B, W, N, C)
    perm = (1, 3 + s_axis, 2, 0, 3 + v_axis)  # (B, W, N, channels) -> (W, S, N, B, V)
    xs = x.reshape(B, W, N, *channels).permute(*perm).reshape(W * S, N, B * V)
    out = flow.bmm(token_map.reshape(W * S, N, N), xs)  # (W*S, N, B*V)
    return out.reshape(W, S, N, B, V).permute(*_inverse(perm)).reshape(B, W, N, C)


def _inverse(perm):
    """The permutation that undoes ``perm``."""
    return tuple(int(i) for i in np.argsort(perm))


def _group_mix_groups_first(token_map: flow.Tensor, x: flow.Tensor) -> flow.Tensor:
    """:func:`group_mix` (group-major channels, one map per window) with the group axis leading every merged
    axis, ``(S W)`` instead of ``(W S)``: a tensor split by groups stays split through each reshape (OneFlow
    splits a merged axis along its first factor), so no rank needs another rank's groups.
    token_map ``(W, S, N, N)``, x ``(B, W, N, S*V)`` -> ``(B, W, N, S*V)``."""
    B, W, N, C = x.shape
    S = token_map.shape[1]
    V = C // S
    xs = x.reshape(B, W, N, S, V).permute(3, 1, 2, 0, 4).reshape(S * W, N, B * V)
    maps = token_map.permute(1, 0, 2, 3).reshape(S * W, N, N)
    out = flow.bmm(maps, xs)  # (S*W, N, B*V)
    return out.reshape(S, W, N, B, V).permute(3, 1, 2, 0, 4).reshape(B, W, N, C)


def group_major_order(channels: int, gamma: int) -> np.ndarray:
    """int64 ``(channels,)``: position ``s*V + v`` of the group-major order ``(s v)`` takes channel ``v*S + s``
    of the official ``(v s)`` order (``S = gamma``, ``V = channels / S``): ``x_gm = x[..., order]``."""
    return np.arange(channels).reshape(channels // gamma, gamma).T.reshape(-1).astype(np.int64)


class GroupMix(nn.Module):
    """:func:`group_mix` as a module without parameters or buffers (no state-dict entry): the token mixing is a
    module call of its own, so forward hooks can time it apart from the map that :class:`TokenMap` builds
    (``oneflow_posmlp.bench.profile``). ``forward(token_map, x, group_major) = group_mix(token_map, x, group_major)``."""

    def forward(self, token_map, x, group_major=False):
        return group_mix(token_map, x, group_major)


class TokenMap(nn.Module):
    """Base of the positional maps: ``forward(x, mask, gate)`` = group-wise mix (``self.mix``, a
    :class:`GroupMix`) + absolute bias.

    Subclasses implement :meth:`token_map` returning ``(Wm, S, N, N)``.
    """

    uses_softmax = False
    group_axes = {}  # {per-group parameter: its group axis}, split by the tensor-parallel groups plan

    def __init__(self, win_size: int, gamma: int, absolute_bias: bool = True):
        super().__init__()
        self.win_size = win_size
        self.seq_len = win_size * win_size
        self.gamma = gamma
        self.absolute_bias = absolute_bias
        self.mix = GroupMix()  # no parameters: the state dict keeps the official keys

    def _add_absolute_bias(self):
        """(1, N, 1): one bias per output token, shared by all channels (official name and shape).
        Subclasses call it where the official module registers it, so state-dict order matches."""
        self.token_proj_n_bias = nn.Parameter(flow.zeros(1, self.seq_len, 1))

    def token_map(self, mask=None):
        raise NotImplementedError

    def forward(self, x, mask=None, gate=None, group_major=False):
        """x: ``(B, W, N, C)``; mask: ``(W, N, N)`` additive (0 or :data:`MASK_NEG`) or None;
        gate: ``(1, N, N)`` learned dense map added to the positional map (gated PoSGU) or None;
        group_major: channels of ``x`` (and of the output) in the ``(s v)`` order (see :func:`group_mix`)."""
        token_map = self.cached_token_map(mask) if self._can_cache(x) else self.token_map(mask)  # (Wm, S, N, N)
        if gate is not None:
            token_map = token_map + gate.unsqueeze(1)
        if mask is not None and (gate is not None or not self.uses_softmax):
            keep = (mask == 0).to(token_map.dtype).unsqueeze(1)  # (W, 1, N, N)
            token_map = token_map * keep
        out = self.mix(token_map, x, group_major)
        return self.add_bias(out) if self.absolute_bias else out

    def add_bias(self, x):
        """``x + token_proj_n_bias`` per token: x ``(B, W, N, C)``, the bias ``(1, N, 1)`` shared by all channels."""
        return x + self.token_proj_n_bias.unsqueeze(0)  # (1, 1, N, 1)

    # ------------------------------------------------------------------ eval cache
    # The map depends on the parameters only, not on the batch: in eval without gradients it is computed once and
    # reused by every batch until the weights may have changed: ``train()``/``eval()``, a state-dict load and a
    # move (``to``, a parallel layout) drop it. No value is read back from the device to detect a change, so
    # after updating weights in place while in eval (an EMA update), call ``eval()`` again (evaluate() does).
    def _can_cache(self, x):
        """Eval, no autograd, eager; global tensors only when every rank holds the whole parameters (so all
        ranks decide alike: a recomputation is a global op every rank must run)."""
        if self.training or flow.is_grad_enabled() or x.is_lazy:
            return False
        if x.is_global:
            world = flow.env.get_world_size()
            return all(len(t.placement.ranks.flatten()) == world and all(b == flow.sbp.broadcast for b in t.sbp)
                       for t in self._map_inputs())
        return True

    def _map_inputs(self):
        """The tensors the map is computed from: parameters and buffers, absolute bias excluded."""
        named = list(self.named_parameters(recurse=False)) + list(self.named_buffers(recurse=False))
        return [t for name, t in named if name != "token_proj_n_bias"]

    def cached_token_map(self, mask=None):
        """:meth:`token_map` for ``mask`` (by identity), computed once until the cache is dropped."""
        cache = self.__dict__.get("_map_cache")
        if cache is None or cache[0] is not mask:
            cache = (mask, self.token_map(mask))
            self.__dict__["_map_cache"] = cache
        return cache[1]

    def drop_cached_map(self):
        self.__dict__.pop("_map_cache", None)

    def train(self, mode=True):
        self.drop_cached_map()
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self.drop_cached_map()
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self.drop_cached_map()
        return super()._load_from_state_dict(*args, **kwargs)


class GQPE(TokenMap):
    """Generalized quadratic positional encoding (official ``QuaMap``).

    Per group ``s``: centre ``mu_s = attention_centers[s]`` (2,), inverse covariance from
    ``attention_spreads[s]``: ``A A^T`` (``symmetric``), ``A`` itself (free) or the isotropic
    ``a_s = spreads[s]^2`` (``generalized=False``). Score of the pair (m, n) with offset d:
    ``rel_indices[m, n] . pos_proj[s]``; map ``P[s] = softmax over n`` of the score.
    """

    uses_softmax = True
    group_axes = {"attention_centers": 0, "attention_spreads": 0}

    def __init__(self, win_size, gamma=4, generalized=True, symmetric=True, absolute_bias=True,
                 use_softmax=True, att_std=1e-2):
        super().__init__(win_size, gamma, absolute_bias)
        self.generalized = generalized
        self.symmetric = symmetric
        self.use_softmax = use_softmax
        self.uses_softmax = use_softmax
        self.attention_centers = nn.Parameter(flow.zeros(gamma, 2).normal_(0.0, att_std))
        if generalized:
            spreads = flow.eye(2).unsqueeze(0).repeat(gamma, 1, 1) + flow.zeros(gamma, 2, 2).normal_(0.0, att_std)
        else:
            spreads = 1 + flow.zeros(gamma).normal_(0.0, att_std)
        self.attention_spreads = nn.Parameter(spreads)
        self._add_absolute_bias()
        self.register_buffer("rel_indices", flow.tensor(quadratic_relative_indices(win_size, generalized)))

    def position_projection(self):
        """``(S, 5)`` or ``(S, 3)`` coefficients of the quadratic form over ``rel_indices`` features."""
        d1, d2 = self.attention_centers[:, 0], self.attention_centers[:, 1]
        if self.generalized:
            A = self.attention_spreads
            inv_cov = flow.matmul(A, A.transpose(1, 2)) if self.symmetric else A
            a, b = inv_cov[:, 0, 0], inv_cov[:, 0, 1]
            c, d = inv_cov[:, 1, 1], inv_cov[:, 1, 0]
            return -0.5 * flow.stack([-2 * (a * d1 + b * d2), -2 * (c * d2 + d * d1), a, c, b + d], dim=-1)
        a = self.attention_spreads ** 2
        return flow.stack([a * d1, a * d2, -0.5 * flow.ones_like(d1)], dim=-1)

    def token_map(self, mask=None):
        N = self.seq_len
        if _split_by_groups(self.attention_centers):
            score = self._split_groups_score()
        else:
            proj = self.position_projection()  # (S, D)
            # (S, D) x (D, N*N): the group axis comes out first, no permute of the (N*N, S) scores (bit-identical)
            score = flow.matmul(proj, self._features_t())  # (S, N*N)
        score = score.reshape(1, self.gamma, N, N)  # (1, S, N, N)
        if mask is not None:
            score = score + mask.unsqueeze(1)  # (W, S, N, N)
        return score.softmax(dim=-1) if self.use_softmax else score

    def _features_t(self):
        """``rel_indices`` as ``(D, N*N)``. Eagerly a contiguous copy kept between calls (made again when the buffer
        is replaced): OneFlow copies a transposed view before every matmul otherwise (docs/benchmark.md). The buffer is
        a function of the window only, so nothing a step changes can make the copy stale."""
        rel = self.rel_indices
        features_t = rel.reshape(self.seq_len * self.seq_len, -1).transpose(0, 1)
        if rel.is_lazy:  # inside an nn.Graph: the graph plans the layout itself
            return features_t
        cache = self.__dict__.get("_features_t_cache")
        if cache is None or cache[0] is not rel:
            cache = (rel, features_t.contiguous())
            self.__dict__["_features_t_cache"] = cache
        return cache[1]

    def _split_groups_score(self):
        """The scores ``(S, N*N)`` of :meth:`position_projection` and ``rel_indices`` when the per-group parameters
        are split over tensor-parallel ranks (the ``groups`` plan): the same quadratic form, written as products of
        each group's own matrix and centre with the (replicated) offset features,
        ``(Sigma^-1 mu) . (dx, dy) - 1/2 vec(Sigma^-1) . (dx^2, dx dy, dy dx, dy^2)``, with no stack of per-group
        scalars: OneFlow 0.9.0's nn.Graph runs ``stack``'s backward on replicated tensors, gathering the split
        per-group values, and with 4 CPU ranks that transfer aborts the graph (``register.cpp:75 Check failed:
        separated_header_mem_ptr() == nullptr``). Equal to the one-process scores within float rounding."""
        N = self.seq_len
        rel = self.rel_indices.reshape(N * N, -1)  # (N*N, 5) [dx, dy, dx^2, dy^2, dx dy] or (N*N, 3)
        offsets = rel[:, 0:2].transpose(0, 1)  # (2, N*N)
        mu = self.attention_centers  # (S, 2)
        if not self.generalized:  # a (d1 dx + d2 dy) - 1/2 (dx^2 + dy^2)
            a = (self.attention_spreads ** 2).unsqueeze(1)  # (S, 1)
            return flow.matmul(a * mu, offsets) - 0.5 * rel[:, 2].unsqueeze(0)
        A = self.attention_spreads
        inv_cov = flow.matmul(A, A.transpose(1, 2)) if self.symmetric else A  # (S, 2, 2) [[a, b], [d, c]]
        linear = flow.matmul(inv_cov, mu.unsqueeze(-1)).squeeze(-1)  # (S, 2): (a d1 + b d2, d d1 + c d2)
        squares = flow.stack([rel[:, 2], rel[:, 4], rel[:, 4], rel[:, 3]], dim=0)  # (4, N*N): a, b, d, c's features
        return flow.matmul(linear, offsets) - 0.5 * flow.matmul(inv_cov.reshape(-1, 4), squares)


def _split_by_groups(param):
    """True for a per-group parameter split over ranks along its group axis (the tensor-parallel ``groups``
    plan, ``parallel/tensor_parallel.py``)."""
    return param.is_global and any(s == flow.sbp.split(0) for s in param.sbp)


class LRPE(TokenMap):
    """Learnable relative positional encoding (official ``LearnedPosMap``).

    ``P[s, m, n] = window_relative_position_bias_table[index[m, n], s]``: O(N) parameters per group.
    """

    group_axes = {"window_relative_position_bias_table": 1}

    def __init__(self, win_size, gamma=1, absolute_bias=True, init_std=0.02):
        super().__init__(win_size, gamma, absolute_bias)
        self._add_absolute_bias()
        h = w = win_size
        self.window_relative_position_bias_table = nn.Parameter(flow.zeros((2 * h - 1) * (2 * w - 1), gamma))
        self.register_buffer("window_relative_position_index", flow.tensor(relative_position_index(win_size)))
        if init_std > 0:
            trunc_normal_(self.window_relative_position_bias_table, std=init_std)

    def token_map(self, mask=None):
        N = self.seq_len
        idx = self.window_relative_position_index.reshape(-1)
        table = flow.index_select(self.window_relative_position_bias_table, 0, idx)  # (N*N, S)
        return table.reshape(N, N, self.gamma).permute(2, 0, 1).unsqueeze(0)  # (1, S, N, N)


def dense_mix(proj: nn.Linear, x: flow.Tensor, mask=None) -> flow.Tensor:
    """gMLP's spatial projection: ``out[b, w, m, c] = sum_n W[m, n] x[b, w, n, c] + bias[m]``.

    Args:
        proj: ``nn.Linear(N, N)`` holding ``W`` (O(N^2) parameters, shared by all channels).
        x: ``(B, W, N, C)``; mask: ``(W, N, N)`` additive shift mask or None.
    """
    B, W, N, C = x.shape
    weight = proj.weight.unsqueeze(0)  # (1, N, N)
    if mask is not None:
        weight = weight * (mask == 0).to(weight.dtype)  # (W, N, N)
        out = flow.matmul(weight.unsqueeze(0), x)  # (B, W, N, C)
    else:
        out = flow.matmul(weight, x.reshape(B * W, N, C)).reshape(B, W, N, C)
    if proj.bias is not None:
        out = out + proj.bias.reshape(1, 1, N, 1)
    return out
