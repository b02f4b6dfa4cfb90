"""cpu_kernels/layer_norm.py: the CPU LayerNorm (BatchNorm kernel on rows) against nn.LayerNorm, forward and backward;
cpu_kernels/conv.py: Conv2d (bias added after the convolution on CPU) against nn.Conv2d."""
import numpy as np
import oneflow as flow
import oneflow.nn as nn
import pytest

from oneflow_posmlp.cpu_kernels.layer_norm import LayerNorm, _rows_normalized_composed, uses_cpu_path
from oneflow_posmlp.cpu_kernels.conv import Conv2d


@pytest.mark.parametrize("shape", [(2, 3, 16, 8), (5, 8), (2, 4, 4, 8)])
def test_layer_norm_equals_builtin_forward_and_backward(shape):
    flow.manual_seed(0)
    fast, ref = LayerNorm(shape[-1], eps=1e-6), nn.LayerNorm(shape[-1], eps=1e-6)
    for p in (fast.weight, fast.bias):
        p.data.normal_()
    ref.load_state_dict(fast.state_dict())
    assert list(fast.state_dict()) == ["weight", "bias"] and isinstance(fast, nn.LayerNorm)
    x = (flow.randn(*shape) * 3 + 1).requires_grad_()
    xr = x.detach().clone().requires_grad_()
    assert uses_cpu_path(x)
    y, yr = fast(x), ref(xr)
    np.testing.assert_allclose(y.numpy(), yr.numpy(), rtol=1e-5, atol=1e-5)
    g = flow.randn(*shape)
    (y * g).sum().backward()
    (yr * g).sum().backward()
    for a, b in ((x.grad, xr.grad), (fast.weight.grad, ref.weight.grad), (fast.bias.grad, ref.bias.grad)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)


def test_layer_norm_composed_graph_path_equals_builtin():
    """The form a one-process nn.Graph runs (no normalization op): forward and backward equal nn.LayerNorm."""
    flow.manual_seed(0)
    x = (flow.randn(2, 3, 16, 8) * 3 + 1).requires_grad_()
    xr = x.detach().clone().requires_grad_()
    y, yr = _rows_normalized_composed(x, 1e-6), nn.functional.layer_norm(xr, (8,), eps=1e-6)
    np.testing.assert_allclose(y.numpy(), yr.numpy(), rtol=1e-5, atol=1e-5)
    g = flow.randn(2, 3, 16, 8)
    (y * g).sum().backward()
    (yr * g).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), xr.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_layer_norm_of_a_permuted_view():
    flow.manual_seed(0)
    fast, ref = LayerNorm(6, eps=1e-6), nn.LayerNorm(6, eps=1e-6)
    x = flow.randn(2, 6, 4, 5).permute(0, 2, 3, 1)  # (B, H, W, C) view of a channels-first map
    np.testing.assert_allclose(fast(x).numpy(), ref(x).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("groups, bias", [(1, True), (4, True), (1, False)])
def test_conv_with_bias_after_equals_builtin(groups, bias):
    flow.manual_seed(0)
    fast = Conv2d(4, 8, 3, stride=2, padding=1, groups=groups, bias=bias)
    ref = nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=groups, bias=bias)
    if bias:
        fast.bias.data.normal_()
    ref.load_state_dict(fast.state_dict())
    x = flow.randn(2, 4, 9, 9, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    y, yr = fast(x), ref(xr)
    np.testing.assert_allclose(y.numpy(), yr.numpy(), rtol=1e-5, atol=1e-6)
    y.sum().backward()
    yr.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), xr.grad.numpy(), rtol=1e-5, atol=1e-6)
    if bias:
        np.testing.assert_allclose(fast.bias.grad.numpy(), ref.bias.grad.numpy(), rtol=1e-5, atol=1e-5)
