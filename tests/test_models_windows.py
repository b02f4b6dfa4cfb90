"""Shifted windows (Swin-style cyclic shift + mask) against a direct masked computation."""
import numpy as np
import oneflow as flow
import pytest

from oneflow_posmlp.models import PoSGU, PosMLPLayer, build_model
from oneflow_posmlp.models.windows import window_partition, window_reverse


def _direct_shifted_layer(layer, x):
    """out[p] = x[p] + proj_c_s(mix(u)[p] * v[p]) where token p mixes with the tokens q of its shifted
    window that are also within a window's reach of p in the *unshifted* image (no wrap-around)."""
    H, W, C = x.shape[1:]
    w, s = layer.win_size, layer.shift_size
    with flow.no_grad():
        hidden = layer.act(layer.proj_c_e(layer.norm(flow.tensor(x)))).numpy()  # (1, H, W, D)
        unmasked = layer.gate_unit.pos.token_map(None).numpy()[0]  # (S, N, N)
        if not layer.gate_unit.pos_only:
            unmasked = unmasked + layer.gate_unit.token_proj_n_weight.numpy()
        bias = layer.gate_unit.pos.token_proj_n_bias.numpy()[0, :, 0]
    S = unmasked.shape[0]
    u, v = np.split(hidden[0], 2, axis=-1)
    coords = [(i, j) for i in range(H) for j in range(W)]
    shifted = {p: ((p[0] - s) % H, (p[1] - s) % W) for p in coords}
    mixed = np.zeros_like(u)
    for p in coords:
        a, b = shifted[p]
        m = (a % w) * w + (b % w)
        for q in coords:
            c, d = shifted[q]
            same_window = (a // w, b // w) == (c // w, d // w)
            contiguous = abs(p[0] - q[0]) < w and abs(p[1] - q[1]) < w
            if not (same_window and contiguous):
                continue
            n = (c % w) * w + (d % w)
            weight = unmasked[:, m, n]  # (S,)
            if layer.gate_unit.quadratic and layer.gate_unit.pos_only:
                # softmax restricted to the allowed sources = renormalised unmasked softmax
                allowed = [((shifted[r][0] % w) * w + shifted[r][1] % w) for r in coords
                           if (shifted[r][0] // w, shifted[r][1] // w) == (a // w, b // w)
                           and abs(p[0] - r[0]) < w and abs(p[1] - r[1]) < w]
                weight = weight / unmasked[:, m, allowed].sum(-1)
            mixed[p] += np.tile(weight, u.shape[-1] // S) * u[q]
        a, b = shifted[p]
        mixed[p] += bias[(a % w) * w + (b % w)]
    gated = mixed * v
    ws, bs = layer.proj_c_s.weight.numpy(), layer.proj_c_s.bias.numpy()
    return x + (gated @ ws.T + bs)[None]


@pytest.mark.parametrize("quadratic,pos_only", [(True, True), (False, True), (False, False)])
def test_shifted_layer_equals_direct_masked_computation(quadratic, pos_only):
    flow.manual_seed(0)
    H = W = 8
    layer = PosMLPLayer(8, 4, PoSGU, chunks=2, mlp_ratio=2, shift_size=2, feature_size=(H, W), gamma=2,
                        quadratic=quadratic, pos_only=pos_only, norm_layer=lambda d: flow.nn.LayerNorm(d, eps=1e-6))
    with flow.no_grad():  # make every map entry matter
        for name, p in layer.named_parameters():
            p.add_(flow.randn(*p.shape) * 0.3)
    layer.eval()
    x = np.random.default_rng(1).standard_normal((1, H, W, 8)).astype(np.float32)
    got = layer(flow.tensor(x)).numpy()
    np.testing.assert_allclose(got, _direct_shifted_layer(layer, x), rtol=1e-4, atol=1e-4)


def test_shift_changes_the_result_and_unshifted_blocks_still_alternate(tiny_model_cfg):
    cfg = dict(tiny_model_cfg, depths=[2, 2, 1, 1])
    flow.manual_seed(0)
    plain = build_model(cfg)
    shifted = build_model(dict(cfg, shift=True))
    shifted.load_state_dict(plain.state_dict())  # shifting adds no parameters or persistent buffers
    shifts = [b.shift_size for lvl in shifted.levels for b in lvl.encoder]
    assert shifts == [0, 4, 0, 2, 0, 0]  # odd blocks shift by half a window where the map has >1 window
    x = flow.randn(2, 3, 64, 64)
    plain.eval(), shifted.eval()
    assert not np.allclose(plain(x).numpy(), shifted(x).numpy(), atol=1e-6)
    shifted.train()
    shifted(x).sum().backward()  # trains


def test_window_partition_roundtrip():
    x = flow.randn(2, 8, 12, 3)
    win = window_partition(x, 4, 4)
    assert tuple(win.shape) == (2, 6, 16, 3)
    assert np.array_equal(window_reverse(win, 8, 12, 4, 4).numpy(), x.numpy())
    # first window = top-left 4x4 block, row-major
    assert np.array_equal(win[0, 0].numpy(), x[0, :4, :4].reshape(16, 3).numpy())
