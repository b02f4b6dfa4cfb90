"""The tensor-parallel plan the blocks declare (``models/layers.py``), applied by ``parallel/tensor_parallel.py``:
which parameters it splits and (``groups``) stores permuted, that a renamed layer, a missing plan or a degree that
does not divide a level's ``gamma`` is an error (never a silent fallback to replication), that the ``groups``
orders hand each rank its own channel groups and compute the one-process gating unit, and the SBP and stored
order every parameter ends up with on 2 ranks (``tests/tp_plan_job.py``)."""
import json

import numpy as np
import oneflow as flow
import pytest

from launch import ROOT, TIMEOUT, launcher, run_bounded
from oneflow_posmlp.models import build_model
from oneflow_posmlp.models.layers import PosMLPLayer
from oneflow_posmlp.models.norm import LayerNorm
from oneflow_posmlp.models.posgu import SGU, PoSGU
from oneflow_posmlp.models.token_mixing import GQPE, group_major_order, group_mix
from oneflow_posmlp.parallel import LayoutError
from oneflow_posmlp.parallel.tensor_parallel import check_tensor_parallel, tensor_parallel_plan

# what the plan must split in the tiny model (4 levels of 1 block): by columns, by rows
COLUMNS = {f"levels.{i}.encoder.0.proj_c_e.weight" for i in range(4)} | {"head.weight"}
ROWS = {f"levels.{i}.encoder.0.proj_c_s.weight" for i in range(4)}
# and, under the groups plan, GQPE's per-group parameters along their group axis
GROUPS = {f"levels.{i}.encoder.0.gate_unit.pos.{name}" for i in range(4)
          for name in ("attention_centers", "attention_spreads")}
PERMUTED = {f"levels.{i}.encoder.0.{name}" for i in range(4)
            for name in ("proj_c_e.weight", "proj_c_e.bias", "proj_c_s.weight")}


@pytest.mark.parametrize("mode", ["gather", "groups"])
def test_the_declared_plan_splits_the_channel_projections_and_the_head(tiny_model_cfg, mode):
    model = build_model(tiny_model_cfg)
    plan = tensor_parallel_plan(model, mode, 2)
    assert {n for n, s in plan.sbps.items() if s == flow.sbp.split(1)} == ROWS
    if mode == "gather":
        assert set(plan.sbps) == COLUMNS | ROWS and not plan.orders and not plan.parts
        assert {n for n, s in plan.sbps.items() if s == flow.sbp.split(0)} == COLUMNS
    else:
        assert set(plan.sbps) == COLUMNS | ROWS | GROUPS
        assert {n for n, s in plan.sbps.items() if s == flow.sbp.split(0)} == COLUMNS | GROUPS
        assert set(plan.orders) == PERMUTED
        assert sorted(id(m) for m, _ in plan.parts) == sorted(id(m) for m in model.modules()
                                                               if isinstance(m, PosMLPLayer))
    blocks = sorted(id(m) for m in model.modules() if isinstance(m, PosMLPLayer))
    assert sorted(id(m) for m, _ in plan.gathers) == blocks  # both bring the block output to replicated channels
    assert {attr for _, attr in plan.gathers} == {"gate_sbp"}


def test_lrpe_splits_its_table_by_groups(tiny_model_cfg):
    plan = tensor_parallel_plan(build_model(dict(tiny_model_cfg, quadratic=False)), "groups", 2)
    tables = {n: s for n, s in plan.sbps.items() if n.endswith("window_relative_position_bias_table")}
    assert len(tables) == 4 and all(s == flow.sbp.split(1) for s in tables.values())


@pytest.mark.parametrize("plan,needle", [
    ({"columns": ("proj_c_expand",), "rows": ("proj_c_s",), "gather": "gate_sbp"}, "names the layer 'proj_c_expand'"),
    ({"columns": ("proj_c_e",), "rows": ("norm",), "gather": "gate_sbp"}, "names the layer 'norm'"),  # not a Linear
    ({"columns": ("proj_c_e",), "rows": ("proj_c_s",), "gather": "gather_sbp"}, "gathers through 'gather_sbp'"),
    (None, "declares a tensor_parallel_plan"),
])
def test_a_plan_that_matches_nothing_is_an_error(tiny_model_cfg, monkeypatch, plan, needle):
    monkeypatch.setattr(PosMLPLayer, "tensor_parallel_plan", plan)
    model = build_model(tiny_model_cfg)
    for mode in ("gather", "groups"):
        with pytest.raises(LayoutError, match=needle):
            tensor_parallel_plan(model, mode)
        with pytest.raises(LayoutError, match=needle):
            check_tensor_parallel(model, 2, mode)


@pytest.mark.parametrize("groups,needle", [
    (None, "declares no 'groups' entry"),
    (("gate", "gate_parts"), "splits the gating unit 'gate' by groups"),
    (("gate_unit", "parts"), "sets the degree through 'parts'"),
])
def test_a_groups_plan_that_matches_nothing_is_an_error(tiny_model_cfg, monkeypatch, groups, needle):
    plan = dict(PosMLPLayer.tensor_parallel_plan, groups=groups)
    if groups is None:
        del plan["groups"]
    monkeypatch.setattr(PosMLPLayer, "tensor_parallel_plan", plan)
    model = build_model(tiny_model_cfg)
    with pytest.raises(LayoutError, match=needle):
        check_tensor_parallel(model, 2, "groups")
    check_tensor_parallel(build_model(dict(tiny_model_cfg, num_classes=6)), 2, "gather")  # gather needs none of it


def test_a_renamed_layer_is_an_error(tiny_model_cfg):
    model = build_model(tiny_model_cfg)
    block = model.levels[1].encoder[0]
    block.proj_c_expand = block.proj_c_e  # the layer under another name: the plan no longer matches it
    del block.proj_c_e
    with pytest.raises(LayoutError, match="PosMLPLayer levels.1.encoder.0 names the layer 'proj_c_e'"):
        tensor_parallel_plan(model)


def test_a_degree_that_does_not_divide_a_levels_gamma_is_an_error_naming_the_level(tiny_model_cfg):
    cfg = dict(tiny_model_cfg, num_classes=8)
    check_tensor_parallel(build_model(cfg), 2, "groups")  # gamma 2, 4, 8, 16
    with pytest.raises(LayoutError, match=r"in level 0 \(levels\.0\.encoder\.0\.gate_unit\), gamma 2 .* does not split "
                                          r"over 4 ranks.*divides every level's gamma \(model.gamma: \[2, 4, 8, 16\]\), "
                                          r"or dist.tensor_parallel_mode=gather"):
        check_tensor_parallel(build_model(cfg), 4, "groups")
    with pytest.raises(LayoutError, match=r"in level 1 \(levels\.1\.encoder\.0\.gate_unit\), gamma 2"):
        check_tensor_parallel(build_model(dict(cfg, gamma=[4, 2, 8, 16])), 4, "groups")
    check_tensor_parallel(build_model(cfg), 4, "gather")  # the gather plan splits hidden widths only
    with pytest.raises(LayoutError, match=r"in level 0 .* 32 channels in 2 chunks of 16 do not split evenly over 3 "
                                          r"ranks"):  # SGU: its chunks' channels
        check_tensor_parallel(build_model(dict(cfg, gate_unit="sgu", num_classes=6)), 3, "groups")
    with pytest.raises(LayoutError, match="tensor_parallel_mode must be one of groups, gather, got 'rows'"):
        check_tensor_parallel(build_model(cfg), 2, "rows")


@pytest.mark.parametrize("parts", [2, 4])
@pytest.mark.parametrize("chunks", [1, 2])
def test_groups_orders_hand_each_rank_its_own_groups(parts, chunks):
    """Block r of proj_c_e's stored rows holds exactly the u channels of groups [r S/t, (r+1) S/t) (official channel
    c of u is in group c % S) and the v channels at the same positions; block r of proj_c_s's columns the same u."""
    dim, S = 96, 8
    gate = PoSGU(dim, 4, chunks=chunks, gamma=S)
    in_order, out_order, split = gate.tensor_parallel_groups(dim, parts)
    half = dim // chunks
    assert sorted(in_order) == list(range(dim)) and sorted(out_order) == list(range(half))
    assert split == {"pos.attention_centers": 0, "pos.attention_spreads": 0}
    for r, (block, out_block) in enumerate(zip(in_order.reshape(parts, -1), out_order.reshape(parts, -1))):
        u, v = (block, block) if chunks == 1 else (block[: len(block) // 2], block[len(block) // 2:] - half)
        assert set(u % S) == set(range(r * S // parts, (r + 1) * S // parts))
        assert list(v) == list(u) and list(out_block) == list(u)


@pytest.mark.parametrize("gate_cfg", [dict(quadratic=True), dict(quadratic=False), dict(quadratic=False, pos_only=False),
                                      dict(quadratic=True, chunks=1), dict(sgu=True), dict(sgu=True, chunks=3)])
@pytest.mark.parametrize("masked", [False, True])
def test_groups_formulation_is_the_gating_unit_with_permuted_channels(gate_cfg, masked):
    """One process: the gating unit fed ``x[..., in_order]`` with ``parts`` (the groups plan's forward, rank blocks
    side by side) returns the official output in ``out_order``: the orders and the split forward agree."""
    flow.manual_seed(0)
    cfg = dict(gate_cfg)
    chunks = cfg.pop("chunks", 2)
    if cfg.pop("sgu", False):
        gate = SGU(48 * chunks, 4, chunks=chunks, norm_layer=lambda d: LayerNorm(d, eps=1e-6), layer_idx=1)
        gate.init_weights()
        for p in gate.parameters():
            p.data.normal_(0, 0.5)
    else:
        gate = PoSGU(48 * chunks, 4, chunks=chunks, gamma=4, **cfg)
        if not cfg.get("pos_only", True):
            gate.token_proj_n_weight.data.normal_(0, 0.1)
    x = flow.randn(2, 3, 16, 48 * chunks)
    mask = flow.tensor(np.where(np.random.default_rng(0).random((3, 16, 16)) < 0.3, -1e4, 0.0).astype(np.float32)) \
        if masked else None
    want = gate(x, mask=mask).numpy()
    in_order, out_order, _ = gate.tensor_parallel_groups(48 * chunks, 2)
    got = gate(x[..., flow.tensor(in_order)], mask=mask, parts=2).numpy()
    np.testing.assert_allclose(got, want[..., out_order], rtol=1e-5, atol=1e-6)


def _split_on_one_rank(t, axis):
    """``t`` as a global tensor split along ``axis`` over a placement of this process alone: the forms the groups
    plan takes for split tensors (the map of split per-group parameters, the mixing, the LayerNorm reduction) run,
    with every value on this rank."""
    placement = flow.placement("cpu", ranks=[0])
    return t.to_global(placement=placement, sbp=flow.sbp.broadcast).to_global(sbp=flow.sbp.split(axis))


@pytest.mark.parametrize("variant", [dict(), dict(symmetric=False), dict(generalized=False)])
def test_gqpe_map_of_split_group_parameters_equals_the_one_process_map(variant):
    flow.manual_seed(0)
    pos = GQPE(4, gamma=4, att_std=0.3, **variant)
    want = pos.token_map().numpy()
    for name in ("attention_centers", "attention_spreads"):
        setattr(pos, name, flow.nn.Parameter(_split_on_one_rank(getattr(pos, name).detach(), 0)))
    pos.rel_indices = _split_on_one_rank(pos.rel_indices, 0).to_global(sbp=flow.sbp.broadcast)
    got = pos.token_map()
    assert got.sbp == (flow.sbp.split(1),)
    np.testing.assert_allclose(got.to_local().numpy(), want, rtol=1e-5, atol=1e-7)


def test_split_channel_forms_of_the_mixing_and_the_layer_norm_equal_the_local_ones():
    flow.manual_seed(0)
    S, V = 4, 3
    maps, x = flow.randn(3, S, 16, 16), flow.randn(2, 3, 16, S * V)
    want = group_mix(maps, x, group_major=True).numpy()
    got = group_mix(_split_on_one_rank(maps, 1), _split_on_one_rank(x, 3), group_major=True)  # groups-first form
    assert got.sbp == (flow.sbp.split(3),)
    np.testing.assert_allclose(got.to_local().numpy(), want, rtol=1e-5, atol=1e-6)
    norm = LayerNorm(12, eps=1e-6)
    norm.weight.data.normal_()
    norm.bias.data.normal_()
    want = norm(x * 3 + 1).numpy()
    for name in ("weight", "bias"):  # split like the channels, as the groups plan splits an SGU's LayerNorms
        setattr(norm, name, flow.nn.Parameter(_split_on_one_rank(getattr(norm, name).detach(), 0)))
    y = norm(_split_on_one_rank(x * 3 + 1, 3))  # per-token statistics reduced over the ranks
    assert y.sbp == (flow.sbp.split(3),)
    np.testing.assert_allclose(y.to_local().numpy(), want, rtol=1e-5, atol=1e-5)


def test_group_major_order_is_the_start_of_the_groups_order():
    """With one rank the groups plan's order is the CPU path's group-major order (PosMLPLayer.hidden_order)."""
    gate = PoSGU(96, 4, gamma=8)
    in_order, out_order, _ = gate.tensor_parallel_groups(96, 1)
    assert list(in_order) == list(gate.hidden_order(96)) and list(out_order) == list(group_major_order(48, 8))


@pytest.mark.distributed
def test_every_parameter_ends_up_with_its_planned_sbp_and_order_on_two_ranks(tmp_path):
    run_bounded(launcher(2) + [f"{ROOT}/tests/tp_plan_job.py", str(tmp_path)], cwd=f"{ROOT}/tests",
                check=True, timeout=TIMEOUT, capture_output=True)
    for rank in (0, 1):
        for mode in ("gather", "groups"):
            got = json.loads((tmp_path / f"rank{rank}_{mode}.json").read_text())
            params = got["parameters"]
            assert params, "no parameters reported"
            for name, sbp in params.items():
                split0 = COLUMNS | (GROUPS if mode == "groups" else set())
                want = "split(dim=0)" if name in split0 else "split(dim=1)" if name in ROWS else "broadcast"
                assert sbp == [f"oneflow.sbp.{want}"], name
            assert all(sbp == ["oneflow.sbp.broadcast"] for sbp in got["buffers"].values())
            assert sorted(got["gather"]) == [f"levels.{i}.encoder.0" for i in range(4)]
            assert all(sbp == ["oneflow.sbp.broadcast"] for sbp in got["gather"].values())
            assert got["parts"] == ({f"levels.{i}.encoder.0": 2 for i in range(4)} if mode == "groups" else {})
            # this rank's part of every parameter is the one its SBP and (groups) stored order give it, and
            # gathering (as checkpoints do) gives back the official tensors
            assert got["local_parts_as_planned"] == sorted(params), set(params) - set(got["local_parts_as_planned"])
            assert got["gathered_max_diff"] == 0.0
            assert set(got["stored_permuted"]) == (PERMUTED if mode == "groups" else set())
            # each rank does half of every split layer's work; the groups plan also halves the token mixing
            one, mine = got["flops_one_process"], got["flops_per_rank"]
            assert mine["conv"] == one["conv"] and mine["linear"] * 2 == one["linear"]
            assert mine["token_mixing"] * (2 if mode == "groups" else 1) == one["token_mixing"]
