"""cpu_kernels/gelu.py: the NumPy-computed GELU equals OneFlow's exact GELU on CPU, forward and backward."""
import json

import numpy as np
import oneflow as flow
import pytest
from launch import ROOT, launcher, run_bounded

from oneflow_posmlp.cpu_kernels.gelu import GELU, gelu, uses_numpy_path


def values(n=300_001):  # more than two NumPy blocks, with the edge values
    x = flow.randn(n) * 4
    x[:8] = flow.tensor([0.0, -0.0, 1e-30, -1e-30, 40.0, -40.0, 1e-45, 7.0])
    return x


def test_forward_and_backward_equal_oneflow_gelu():
    x = values()
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = flow.nn.functional.gelu(a), gelu(b)
    assert yb.shape == x.shape and uses_numpy_path(b)
    assert np.abs(ya.numpy() - yb.numpy()).max() <= 1e-6  # A-S erf: <= 1.5e-7 * |x| / 2, plus rounding
    dy = flow.randn(*x.shape)
    ya.backward(dy)
    yb.backward(dy)
    assert np.abs(a.grad.numpy() - b.grad.numpy()).max() <= 2e-6
    assert b.grad[0].item() == pytest.approx(dy[0].item() * 0.5, rel=1e-6)  # gelu'(0) = 1/2


def test_inference_path_equals_training_path():
    """Without a gradient to compute (no_grad, or an input that needs none) only ``gelu(x)`` is computed; its values
    are the training forward's, and its output records no backward."""
    x = values()
    train = gelu(x.clone().requires_grad_())
    with flow.no_grad():
        under_no_grad = gelu(x.clone().requires_grad_())
    plain = gelu(x)
    assert train.requires_grad and not under_no_grad.requires_grad and not plain.requires_grad
    assert np.array_equal(train.detach().numpy(), under_no_grad.numpy())
    assert np.array_equal(train.detach().numpy(), plain.numpy())


def test_shapes_and_repeated_calls():
    """Outputs keep their shape and their own memory (OneFlow's allocator), call after call."""
    x = flow.randn(2, 3, 5, 7 * 2000)
    kept = [gelu(x) for _ in range(3)]
    assert all(k.shape == x.shape for k in kept)
    assert len({k.numpy().__array_interface__["data"][0] for k in kept}) == 3
    ref = flow.nn.functional.gelu(x).numpy()
    for k in kept:
        assert np.abs(k.numpy() - ref).max() <= 1e-6
    for _ in range(20):  # outputs dropped and their memory reused by OneFlow while NumPy writes new ones
        y = gelu(x) * 1.0
    assert np.abs(y.numpy() - ref).max() <= 1e-6


def test_module_is_an_nn_gelu_and_graphs_use_the_builtin():
    m = GELU()
    assert isinstance(m, flow.nn.GELU)

    class G(flow.nn.Graph):
        def __init__(self):
            super().__init__()
            self.m = m

        def build(self, x):
            return self.m(x)

    x = flow.randn(4, 6)
    assert np.abs(G()(x).numpy() - flow.nn.functional.gelu(x).numpy()).max() == 0  # lazy: the built-in
    assert not uses_numpy_path(x.to(flow.float64))
    assert not uses_numpy_path(flow.randn(4, 6)) and uses_numpy_path(flow.randn(2, 1 << 16))  # small: built-in


@pytest.mark.distributed
def test_global_tensor_split_over_two_ranks(tmp_path):
    """Each rank computes its part (the output on the rank's own device: on rank 1 a tensor allocated on the
    default device held wrong values, measured), forward and backward equal OneFlow's gelu."""
    res = run_bounded(launcher(2) + [str(ROOT + "/tests/gelu_job.py"), str(tmp_path)], capture_output=True, text=True,
                      timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    for r in range(2):
        got = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert got["numpy_path"] and "split(dim=0)" in got["sbp"], got
        assert got["forward"] <= 1e-6 and got["backward"] <= 1e-5, got
