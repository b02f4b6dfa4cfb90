"""The tensor-parallel plan the blocks declare (``models/layers.py``), applied by ``parallel/tensor_parallel.py``:
which parameters it splits, that a renamed layer or a missing plan is an error (never a silent fallback to
replication), and the SBP every parameter ends up with on 2 ranks (``tests/tp_plan_job.py``)."""
import json
import subprocess

import oneflow as flow
import pytest

from launch import ROOT, TIMEOUT, launcher
from oneflow_posmlp.models import build_model
from oneflow_posmlp.models.layers import PosMLPLayer
from oneflow_posmlp.parallel import LayoutError
from oneflow_posmlp.parallel.tensor_parallel import check_tensor_parallel, tensor_parallel_plan

# what the plan must split in the tiny model (4 levels of 1 block): by columns, by rows
COLUMNS = {f"levels.{i}.encoder.0.proj_c_e.weight" for i in range(4)} | {"head.weight"}
ROWS = {f"levels.{i}.encoder.0.proj_c_s.weight" for i in range(4)}


def test_the_declared_plan_splits_the_channel_projections_and_the_head(tiny_model_cfg):
    model = build_model(tiny_model_cfg)
    sbps, gathers = tensor_parallel_plan(model)
    assert {n for n, s in sbps.items() if s == flow.sbp.split(0)} == COLUMNS
    assert {n for n, s in sbps.items() if s == flow.sbp.split(1)} == ROWS
    assert len(sbps) == len(COLUMNS) + len(ROWS)
    assert sorted(id(m) for m, _ in gathers) == sorted(id(m) for m in model.modules() if isinstance(m, PosMLPLayer))
    assert {attr for _, attr in gathers} == {"gate_sbp"}


@pytest.mark.parametrize("plan,needle", [
    ({"columns": ("proj_c_expand",), "rows": ("proj_c_s",), "gather": "gate_sbp"}, "names the layer 'proj_c_expand'"),
    ({"columns": ("proj_c_e",), "rows": ("norm",), "gather": "gate_sbp"}, "names the layer 'norm'"),  # not a Linear
    ({"columns": ("proj_c_e",), "rows": ("proj_c_s",), "gather": "gather_sbp"}, "gathers through 'gather_sbp'"),
    (None, "declares a tensor_parallel_plan"),
])
def test_a_plan_that_matches_nothing_is_an_error(tiny_model_cfg, monkeypatch, plan, needle):
    monkeypatch.setattr(PosMLPLayer, "tensor_parallel_plan", plan)
    model = build_model(tiny_model_cfg)
    with pytest.raises(LayoutError, match=needle):
        tensor_parallel_plan(model)
    with pytest.raises(LayoutError, match=needle):
        check_tensor_parallel(model, 2)


def test_a_renamed_layer_is_an_error(tiny_model_cfg):
    model = build_model(tiny_model_cfg)
    block = model.levels[1].encoder[0]
    block.proj_c_expand = block.proj_c_e  # the layer under another name: the plan no longer matches it
    del block.proj_c_e
    with pytest.raises(LayoutError, match="PosMLPLayer levels.1.encoder.0 names the layer 'proj_c_e'"):
        tensor_parallel_plan(model)


@pytest.mark.distributed
def test_every_parameter_ends_up_with_its_planned_sbp_on_two_ranks(tmp_path):
    subprocess.run(launcher(2) + [f"{ROOT}/tests/tp_plan_job.py", str(tmp_path)], cwd=f"{ROOT}/tests",
                   check=True, timeout=TIMEOUT, capture_output=True)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        params = got["parameters"]
        assert params, "no parameters reported"
        for name, sbp in params.items():
            want = "split(dim=0)" if name in COLUMNS else "split(dim=1)" if name in ROWS else "broadcast"
            assert sbp == [f"oneflow.sbp.{want}"], name
        assert all(sbp == ["oneflow.sbp.broadcast"] for sbp in got["buffers"].values())
        assert sorted(got["gather"]) == [f"levels.{i}.encoder.0" for i in range(4)]
        assert all(sbp == ["oneflow.sbp.broadcast"] for sbp in got["gather"].values())
