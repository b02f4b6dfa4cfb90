"""ONNX export (oneflow_posmlp/export/onnx.py, oneflow_posmlp/cli/export_onnx.py): onnxruntime runs the file and
matches OneFlow's eval output within 1e-4. Skipped when the onnx extra (pip install -e .[onnx]) is not installed."""
import json
import os

import numpy as np
import oneflow as flow
import pytest
import yaml

from oneflow_posmlp.export.onnx import OnnxUnavailable, import_oneflow_onnx

try:
    onnx = import_oneflow_onnx()[0]
except OnnxUnavailable as err:
    pytest.skip(f"the onnx extra is not installed ({err})", allow_module_level=True)

from oneflow_posmlp.export.onnx import export_onnx, run_onnx  # noqa: E402
from oneflow_posmlp.models import build_model, create_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def demo_model_cfg():
    with open(os.path.join(ROOT, "configs", "demo.yaml")) as f:
        return yaml.safe_load(f)["model"]


def assert_runtime_matches(model, path, batch):
    """A fresh input (not the one of the export's own check): onnxruntime vs OneFlow eager, eval mode."""
    x = np.random.default_rng(123).standard_normal((batch, 3, *model.img_size)).astype(np.float32)
    with flow.no_grad():
        ref = model.eval()(flow.tensor(x))
    refs = [t.numpy() for t in (ref if isinstance(ref, list) else [ref])]
    outs = run_onnx(path, x)
    assert [o.shape for o in outs] == [r.shape for r in refs]
    for o, r in zip(outs, refs):
        np.testing.assert_allclose(o, r, rtol=0, atol=1e-4)
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert not ops & {"stack", "var"}, ops  # only standard ONNX ops remain

@pytest.mark.slow

def test_demo_model_and_its_features_export(tmp_path):
    model = build_model(demo_model_cfg())
    path = str(tmp_path / "demo.onnx")
    assert export_onnx(model, path, batch_size=2) <= 1e-4
    assert_runtime_matches(model, path, 2)
    backbone = build_model(demo_model_cfg(), features_only=True)
    path = str(tmp_path / "demo_features.onnx")
    export_onnx(backbone, path, batch_size=1)
    assert_runtime_matches(backbone, path, 1)


def test_shifted_windows_are_refused_with_the_reason(tmp_path):
    model = build_model(dict(demo_model_cfg(), shift=True, depths=[2, 1, 1, 1]))
    with pytest.raises(ValueError, match=r"shifted windows .*flow\.roll"):
        export_onnx(model, str(tmp_path / "x.onnx"))
    assert not os.path.exists(tmp_path / "x.onnx")

@pytest.mark.slow

def test_lrpe_gated_model_exports(tmp_path, tiny_model_cfg):
    model = build_model(dict(tiny_model_cfg, quadratic=False, pos_only=False))
    path = str(tmp_path / "lrpe.onnx")
    export_onnx(model, path, batch_size=1)
    assert_runtime_matches(model, path, 1)


@pytest.mark.slow
def test_posmlp_t_exports(tmp_path):
    model = create_model("posmlp_t")
    path = str(tmp_path / "posmlp_t.onnx")
    export_onnx(model, path, batch_size=1)
    assert_runtime_matches(model, path, 1)

@pytest.mark.slow

def test_export_tool_writes_a_checked_file(tmp_path, capsys):
    from oneflow_posmlp.cli import export_onnx as tool  # posmlp-export-onnx, tools/export_onnx.py

    out = str(tmp_path / "m.onnx")
    assert tool.main(["-c", os.path.join(ROOT, "configs", "demo.yaml"), "--out", out, "--features-only"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["input"] == [1, 3, 32, 32] and report["max_abs_diff_vs_oneflow"] <= 1e-4 and os.path.isfile(out)
    assert tool.main(["-c", os.path.join(ROOT, "configs", "demo.yaml"), "--out", out,
                      "--weights", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
