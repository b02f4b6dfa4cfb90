"""Token mixing: group-wise layout, GQPE/LRPE maps, parameter scaling in the window size."""
import numpy as np
import oneflow as flow
import pytest

from oneflow_posmlp.models import GQPE, LRPE, group_mix
from oneflow_posmlp.models.token_mixing import quadratic_relative_indices, relative_position_index


def _einsum_mix(token_map, x, gamma):
    """The official formulation: einsum('wmns,bwnvs->bwmvs') with channels split as (v s)."""
    B, W, N, C = x.shape
    xs = x.reshape(B, W, N, C // gamma, gamma)
    pm = token_map.transpose(0, 2, 3, 1)  # (Wm, S, M, N) -> (Wm, M, N, S)
    return np.einsum("wmns,bwnvs->bwmvs", pm, xs).reshape(B, W, N, C)


@pytest.mark.parametrize("per_window", [False, True])
def test_group_mix_equals_official_einsum(per_window):
    rng = np.random.default_rng(0)
    B, W, N, S, V = 2, 3, 16, 4, 3
    tm = rng.standard_normal((W if per_window else 1, S, N, N)).astype(np.float32)
    x = rng.standard_normal((B, W, N, V * S)).astype(np.float32)
    got = group_mix(flow.tensor(tm), flow.tensor(x)).numpy()
    np.testing.assert_allclose(got, _einsum_mix(tm, x, S), rtol=1e-5, atol=1e-5)


def test_group_mix_groups_are_interleaved_channels():
    # Channel c belongs to group c % S: a map that is the identity for group 0 only leaves channels 0, S, 2S..
    N, S, V = 4, 2, 3
    tm = np.zeros((1, S, N, N), np.float32)
    tm[0, 0] = np.eye(N)
    x = np.arange(N * V * S, dtype=np.float32).reshape(1, 1, N, V * S) + 1
    out = group_mix(flow.tensor(tm), flow.tensor(x)).numpy()[0, 0]
    assert np.array_equal(out[:, 0::S], x[0, 0][:, 0::S])
    assert not out[:, 1::S].any()


def test_relative_indices_match_official_layout():
    # Written from the official QuaMap.get_rel_indices: rel[m, n] = [dx, dy, dx^2, dy^2, dx*dy].
    win = 3
    rel = quadratic_relative_indices(win)
    p, q = 1, 5  # tokens (0, 1) and (1, 2) of a 3x3 window
    dx = (q % win) - (p % win)
    dy = p // win - q // win
    assert rel[p, q].tolist() == [dx, dy, dx * dx, dy * dy, dx * dy]
    iso = quadratic_relative_indices(win, generalized=False)
    assert iso[p, q].tolist() == [dx, dy, dx * dx + dy * dy]


def test_relative_position_index_is_a_bijection_of_offsets():
    win = 4
    idx = relative_position_index(win)
    assert idx.shape == (16, 16) and idx.dtype == np.int64
    assert idx.min() == 0 and idx.max() == (2 * win - 1) ** 2 - 1
    # Same offset -> same index.
    assert idx[0, 5] == idx[5, 10]


@pytest.mark.parametrize("generalized,symmetric", [(True, True), (True, False), (False, True)])
def test_gqpe_map_is_a_softmax_over_source_tokens(generalized, symmetric):
    pos = GQPE(win_size=4, gamma=3, generalized=generalized, symmetric=symmetric)
    tm = pos.token_map().numpy()
    assert tm.shape == (1, 3, 16, 16)
    np.testing.assert_allclose(tm.sum(-1), 1.0, rtol=1e-5)


def test_gqpe_symmetric_uses_a_a_transpose():
    pos = GQPE(win_size=3, gamma=1)
    A = pos.attention_spreads.numpy()[0]
    inv = A @ A.T
    mu = pos.attention_centers.numpy()[0]
    proj = pos.position_projection().numpy()[0]
    a, b, c, d = inv[0, 0], inv[0, 1], inv[1, 1], inv[1, 0]
    expect = -0.5 * np.array([-2 * (a * mu[0] + b * mu[1]), -2 * (c * mu[1] + d * mu[0]), a, c, b + d])
    np.testing.assert_allclose(proj, expect, rtol=1e-5, atol=1e-7)


def _num_params(m):
    return sum(p.numel() for p in m.parameters())


def test_lrpe_parameters_grow_linearly_and_gqpe_parameters_are_constant_in_window_size():
    gamma = 4
    lrpe = {w: _num_params(LRPE(w, gamma=gamma)) for w in (4, 8, 16)}
    gqpe = {w: _num_params(GQPE(w, gamma=gamma)) for w in (4, 8, 16)}
    # LRPE: (2w-1)^2 * gamma table + N bias = O(N); GQPE: 2 + 4 per group + N bias (the bias is O(N) in
    # both, it is the absolute bias, not the positional encoding).
    for w in (4, 8, 16):
        n = w * w
        assert lrpe[w] == (2 * w - 1) ** 2 * gamma + n
        assert gqpe[w] == gamma * (2 + 4) + n
    assert gqpe[16] - 16 * 16 == gqpe[4] - 4 * 4  # the positional part is O(1)
    assert lrpe[16] / lrpe[4] > 10  # grows with N (roughly 4x per doubling of w)


# ----------------------------------------------------------------------------- eval cache of the maps
def _count_token_map_calls(monkeypatch, cls):
    calls = []
    original = cls.token_map

    def counted(self, mask=None):
        calls.append(mask)
        return original(self, mask)

    monkeypatch.setattr(cls, "token_map", counted)
    return calls


@pytest.mark.parametrize("cls", [GQPE, LRPE])
def test_eval_map_is_computed_once_per_weights_version(monkeypatch, cls):
    flow.manual_seed(0)
    pos = cls(4, gamma=2)
    pos.eval()
    x = flow.randn(2, 3, 16, 6)
    calls = _count_token_map_calls(monkeypatch, cls)
    original = {k: v.clone() for k, v in pos.state_dict().items()}
    with flow.no_grad():
        first = pos(x)
        second = pos(flow.randn(2, 3, 16, 6))  # another batch, same weights: served from the cache
        assert len(calls) == 1 and second.shape == first.shape
        # an in-place update while in eval (as an EMA update) is served stale until eval() drops the cache (no
        # value is read back from the device to detect it; evaluate() calls eval() before every evaluation)
        param = pos.attention_centers if cls is GQPE else pos.window_relative_position_bias_table
        param.add_(0.5)
        np.testing.assert_array_equal(pos(x).numpy(), first.numpy())
        pos.eval()
        updated = pos(x)
        assert len(calls) == 2
        fresh = group_mix(pos.token_map(), x)  # computed directly, no cache
        assert len(calls) == 3
        np.testing.assert_array_equal(updated.numpy(), (fresh + pos.token_proj_n_bias.unsqueeze(0)).numpy())
        assert not np.array_equal(updated.numpy(), first.numpy())
        # a state dict load is seen as well
        pos.load_state_dict(original)
        np.testing.assert_array_equal(pos(x).numpy(), first.numpy())
        assert len(calls) == 4
    # with autograd (training or gradients in eval) the map is recomputed, and training drops the cache
    pos(x)
    assert len(calls) == 5
    pos.train()
    assert "_map_cache" not in pos.__dict__
    # a move (to(), a parallel layout) drops it too
    pos.eval()
    with flow.no_grad():
        pos(x)
    assert "_map_cache" in pos.__dict__
    pos.to("cpu")
    assert "_map_cache" not in pos.__dict__


def test_eval_cache_keys_on_the_shift_mask():
    flow.manual_seed(0)
    pos = GQPE(4, gamma=2).eval()
    x = flow.randn(1, 2, 16, 4)
    mask = flow.zeros(2, 16, 16)
    mask[1, :8, 8:] = -1e4
    with flow.no_grad():
        plain, masked = pos(x), pos(x, mask=mask)
        np.testing.assert_array_equal(masked.numpy(), group_mix(pos.token_map(mask), x).numpy()
                                      + pos.token_proj_n_bias.unsqueeze(0).numpy())
        assert not np.array_equal(plain.numpy(), masked.numpy())


@pytest.mark.parametrize("per_window", [False, True])
def test_group_mix_group_major_order_is_the_same_mix_with_permuted_channels(per_window):
    from oneflow_posmlp.models.token_mixing import group_major_order

    rng = np.random.default_rng(1)
    B, W, N, S, V = 2, 3, 16, 4, 3
    tm = rng.standard_normal((W if per_window else 1, S, N, N)).astype(np.float32)
    x = rng.standard_normal((B, W, N, V * S)).astype(np.float32)
    order = group_major_order(V * S, S)
    assert sorted(order) == list(range(V * S)) and order[1] == S  # (s v): group 0's channels 0, S, 2S.. first
    got = group_mix(flow.tensor(tm), flow.tensor(x[..., order]), group_major=True).numpy()
    np.testing.assert_allclose(got, _einsum_mix(tm, x, S)[..., order], rtol=1e-5, atol=1e-5)
