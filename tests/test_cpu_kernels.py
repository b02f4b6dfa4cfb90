"""oneflow_posmlp/cpu_kernels: one function swaps the CPU-fast forms into a built model and back, one switch turns
them off, the state dict keeps the official names, shapes and order, and the forms compute what the official
modules compute; models/ holds no device branch."""
import copy
import pathlib
import re

import numpy as np
import oneflow as flow
import pytest

from conftest import TINY_MODEL_CFG
from oneflow_posmlp.cpu_kernels import (ENV, apply_cpu_kernels, cpu_kernels_enabled, remove_cpu_kernels,
                                        uses_cpu_kernels)
from oneflow_posmlp.cpu_kernels.group_major import GroupMajorPosMLPLayer
from oneflow_posmlp.cpu_kernels.token_bias import CpuGQPE
from oneflow_posmlp.models import GQPE, PosMLPLayer, PoSGU, build_model
from oneflow_posmlp.parallel import ParallelContext

MODELS = pathlib.Path(__file__).resolve().parent.parent / "oneflow_posmlp" / "models"


def tiny(**overrides):
    flow.manual_seed(0)
    return build_model(dict(TINY_MODEL_CFG, **overrides))


def test_models_hold_no_device_branch_and_no_numpy_on_tensor_memory():
    found = [f"{path.name}:{i}: {line.strip()}" for path in sorted(MODELS.glob("*.py"))
             for i, line in enumerate(path.read_text().splitlines(), 1)
             if re.search(r"on_cpu|is_cuda|\.numpy\(\)|uses_numpy_path|uses_cpu_path|self.group_major", line)]
    assert found == []


def test_apply_swaps_in_place_keeps_the_state_dict_and_remove_restores_the_official_modules(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    model = tiny()
    state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    official = [type(m) for m in model.modules()]
    assert not uses_cpu_kernels(model)
    assert apply_cpu_kernels(model) > 0 and uses_cpu_kernels(model)
    assert any(isinstance(m, GroupMajorPosMLPLayer) for m in model.modules())
    assert all(isinstance(m, cls) for m, cls in zip(model.modules(), official))  # subclasses of the official ones
    swapped = model.state_dict()
    assert list(swapped) == list(state)  # names and order
    for k, v in swapped.items():
        np.testing.assert_array_equal(v.numpy(), state[k])
    plain = tiny()
    plain.load_state_dict(swapped)  # a state dict of either form loads into the other
    model.load_state_dict(plain.state_dict())
    assert remove_cpu_kernels(model) > 0 and [type(m) for m in model.modules()] == official


def test_one_switch_turns_them_off(monkeypatch):
    monkeypatch.setenv(ENV, "0")
    assert not cpu_kernels_enabled() and apply_cpu_kernels(tiny()) == 0
    monkeypatch.setenv(ENV, "1")
    assert cpu_kernels_enabled() and not cpu_kernels_enabled(False) and apply_cpu_kernels(tiny(), False) == 0


@pytest.mark.parametrize("configured", [True, False])
def test_a_cpu_run_applies_them_unless_dist_cpu_kernels_is_false(monkeypatch, configured):
    monkeypatch.delenv(ENV, raising=False)
    ctx = ParallelContext({"device": "cpu", "cpu_kernels": configured, "data_parallel": 0, "tensor_parallel": 1,
                           "pipeline_parallel": 1})
    assert uses_cpu_kernels(ctx.apply(tiny())) == configured


@pytest.mark.parametrize("overrides", [{}, {"quadratic": False, "pos_only": False}, {"stem_norm": "LN"}])
def test_the_kernels_compute_the_official_model_within_float_rounding(monkeypatch, overrides):
    monkeypatch.delenv(ENV, raising=False)
    model = tiny(**overrides)
    fast = copy.deepcopy(model)
    apply_cpu_kernels(fast)
    x = flow.randn(2, 3, 64, 64)
    for m in (model, fast):
        m.eval()
    with flow.no_grad():
        np.testing.assert_allclose(fast(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)
    outs = []
    for m in (model, fast):
        m.train()
        out = m(x)
        out.sum().backward()
        outs.append((out.numpy(), [p.grad.numpy() for p in m.parameters()]))
    np.testing.assert_allclose(outs[1][0], outs[0][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(outs[1][1], outs[0][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("chunks", [2, 1])
def test_the_group_major_block_equals_the_official_channel_order(chunks):
    flow.manual_seed(0)
    layer = PosMLPLayer(8, 4, PoSGU, chunks=chunks, gamma=2).train()
    fast = copy.deepcopy(layer)
    apply_cpu_kernels(fast)
    assert isinstance(fast, GroupMajorPosMLPLayer)
    x = flow.randn(2, 3, 16, 8)
    outs, grads = [], []
    for m in (fast, layer):
        xg = x.clone().requires_grad_()
        out = m(xg)
        out.sum().backward()
        outs.append(out.numpy())
        grads.append([xg.grad.numpy()] + [p.grad.numpy() for p in m.parameters()])
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_token_bias_form_is_bit_identical_to_the_broadcast():
    flow.manual_seed(0)
    pos = GQPE(4, gamma=2)
    pos.token_proj_n_bias.data.normal_()
    x = flow.randn(2, 3, 16, 6)
    official = pos.add_bias(x).numpy()
    apply_cpu_kernels(pos)
    assert isinstance(pos, CpuGQPE)
    np.testing.assert_array_equal(pos.add_bias(x).numpy(), official)


def test_the_onnx_export_takes_the_official_forms(monkeypatch):
    from oneflow_posmlp.export.onnx import prepare_for_export

    monkeypatch.delenv(ENV, raising=False)
    model = tiny()
    apply_cpu_kernels(model)
    assert not uses_cpu_kernels(prepare_for_export(model)) and uses_cpu_kernels(model)  # a copy, the original kept


def test_the_flop_counter_counts_the_same_with_the_kernels(monkeypatch):
    from oneflow_posmlp.models.flops import count_flops

    monkeypatch.delenv(ENV, raising=False)
    model = tiny()
    official = count_flops(model)
    apply_cpu_kernels(model)  # every module the counter hooks is still called as a module
    assert count_flops(model) == official and official[0] > 0
