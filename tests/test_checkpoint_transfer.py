"""oneflow_posmlp/checkpoint/transfer.py: weights carried over to other windows and image sizes (fine-tuning at
another resolution) through create_model(weights=), train --init and the eval/predict/export tools."""
import json
import logging
import os

import numpy as np
import oneflow as flow
import pytest

from conftest import TINY_MODEL_CFG, tiny_train_opts
from oneflow_posmlp.checkpoint import CheckpointError, load_pretrained, save_weights
from oneflow_posmlp.checkpoint.transfer import (bicubic_matrix, resize_grid, resize_relative_table,
                                                transfer_windows, weights_windows)
from oneflow_posmlp.config import load_config
from oneflow_posmlp.models import build_model, create_model
from oneflow_posmlp.models.token_mixing import quadratic_relative_indices, relative_position_index

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "demo.yaml")
AT_64 = ["model.img_size=64", "model.win_size=[8,8,4,2]"]  # the demo model (32 px, windows 4-4-2-1) at 64 px


def state_of(model):
    """``{name: np.ndarray}`` copies (``Tensor.numpy()`` of a CPU tensor shares its memory)."""
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def pos_maps(model):
    """Every block's positional token map (1, S, N, N), eval mode."""
    with flow.no_grad():
        return [b.gate_unit.pos.token_map().numpy() for level in model.levels for b in level.encoder]


# ----------------------------------------------------------------------------------------------- the interpolation
@pytest.mark.parametrize("n_in,n_out", [(27, 23), (13, 23), (7, 12), (14, 12), (3, 5), (1, 3), (3, 1), (27, 15)])
def test_bicubic_equals_oneflow_interpolate_align_corners_false(n_in, n_out):
    """Swin resizes its tables with F.interpolate(mode="bicubic") (align_corners=False): OneFlow's kernel computes
    the same resize as ours (float32 rounding apart)."""
    x = np.random.default_rng(n_in * 100 + n_out).standard_normal((1, 2, n_in, n_in)).astype(np.float32)
    ref = flow.nn.functional.interpolate(flow.tensor(x), size=(n_out, n_out), mode="bicubic",
                                         align_corners=False).numpy()
    np.testing.assert_allclose(resize_grid(x, (2, 3), n_out), ref, rtol=0, atol=2e-5)


def test_bicubic_matrix_is_half_pixel_keys_cubic():
    for n_in, n_out in [(27, 23), (7, 12), (5, 5), (1, 4)]:
        np.testing.assert_allclose(bicubic_matrix(n_in, n_out).sum(1), 1.0, rtol=0, atol=1e-12)  # partition of unity
    assert np.array_equal(bicubic_matrix(9, 9), np.eye(9))
    # half-pixel centres: output o samples the input at (o + 0.5) n_in / n_out - 0.5; where that falls on a sample
    # (t = 0) or half-way (t = 0.5, symmetric weights) a ramp is reproduced exactly
    for n_in, n_out in [(15, 5), (12, 6)]:
        src = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
        ramp = bicubic_matrix(n_in, n_out) @ np.arange(n_in, dtype=np.float64)
        np.testing.assert_allclose(ramp[1:-1], src[1:-1], rtol=0, atol=1e-12)
    # Keys' kernel with PyTorch's A = -0.75, by hand at t = 0.25: W(1.25), W(0.25), W(0.75), W(1.75)
    # (6 -> 12: output 3 samples 3.5 * 0.5 - 0.5 = 1.25, taps 0..3)
    np.testing.assert_allclose(bicubic_matrix(6, 12)[3], [-0.10546875, 0.87890625, 0.26171875, -0.03515625, 0, 0],
                               rtol=0, atol=1e-15)


# ---------------------------------------------------------------------------------------------------------- LRPE
@pytest.mark.parametrize("w,w2", [(7, 4), (7, 12), (4, 8), (14, 12), (2, 1), (1, 2)])
def test_relative_table_resize_keeps_the_centre_and_the_symmetries(w, w2):
    s, s2 = 2 * w - 1, 2 * w2 - 1
    grid = np.random.default_rng(w * 10 + w2).standard_normal((s, s, 3)).astype(np.float32)  # (dy, dx, group)

    def resized(g):
        out = resize_relative_table(g.reshape(s * s, 3), w2)
        assert out.shape == (s2 * s2, 3) and out.dtype == np.float32
        return out.reshape(s2, s2, 3)

    r = resized(grid)
    assert np.array_equal(r[w2 - 1, w2 - 1], grid[w - 1, w - 1])  # offset 0: bit for bit
    tol = dict(rtol=0, atol=1e-5)
    np.testing.assert_allclose(resized(grid[::-1]), r[::-1], **tol)  # dy -> -dy commutes with the resize
    np.testing.assert_allclose(resized(grid[:, ::-1]), r[:, ::-1], **tol)
    np.testing.assert_allclose(resized(grid.transpose(1, 0, 2)), r.transpose(1, 0, 2), **tol)  # dy <-> dx
    even = (grid + grid[::-1, ::-1]) / 2  # T(d) = T(-d) stays so
    np.testing.assert_allclose(resized(even), resized(even)[::-1, ::-1], **tol)
    np.testing.assert_allclose(resized(np.full_like(grid, 0.25)), 0.25, **tol)


def lrpe_gated_cfg(**kw):
    return dict(TINY_MODEL_CFG, quadratic=False, pos_only=False, **kw)  # windows 8-4-4-2 at 64 px


def test_unchanged_windows_are_the_identity():
    state = state_of(build_model(lrpe_gated_cfg()))
    lines = []
    out, report = transfer_windows(state, TINY_MODEL_CFG["win_size"], log=lines.append)
    assert report == {} and lines == [] and list(out) == list(state)
    assert all(out[k] is state[k] for k in state)


def test_lrpe_gated_tensors_take_every_level_target_shape_and_load():
    source = build_model(lrpe_gated_cfg())
    state = state_of(source)
    target = build_model(lrpe_gated_cfg(win_size=[4, 8, 2, 1]))  # every level changes, up and down
    lines = []
    out, report = transfer_windows(state, [4, 8, 2, 1], log=lines.append)
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: tuple(v.shape) for k, v in target.state_dict().items()}
    assert {k: (v["action"], v["count"]) for k, v in report.items()} == {
        "token_proj_n_bias": ("resized", 4), "window_relative_position_bias_table": ("resized", 4),
        "window_relative_position_index": ("rebuilt", 4), "token_proj_n_weight": ("resized", 4)}
    assert len(lines) == 1 + len(report) and "windows [8, 4, 4, 2]" in lines[0] and "[4, 8, 2, 1]" in lines[0]
    assert any(line.startswith("weight transfer: resized 4 x window_relative_position_bias_table: [225, 2] -> "
                               "[49, 2] (level 0), [49, 4] -> [225, 4] (level 1)") for line in lines)
    load_pretrained(target, (state, {}))
    for i, w in enumerate([4, 8, 2, 1]):
        assert np.array_equal(target.levels[i].encoder[0].gate_unit.pos.window_relative_position_index.numpy(),
                              relative_position_index(w))
    for k, v in target.state_dict().items():  # every window-independent tensor exactly
        if not any(s in k for s in ("pos.", "token_proj_n_weight")):
            assert np.array_equal(v.numpy(), state[k]), k
    x = flow.randn(2, 3, 64, 64)
    assert np.isfinite(target.eval()(x).numpy()).all()


# ---------------------------------------------------------------------------------------------------------- GQPE
def test_gqpe_transferred_model_has_the_map_of_a_model_built_at_the_target_windows():
    source = build_model(dict(TINY_MODEL_CFG))  # GQPE, windows 8-4-4-2 at 64 px
    target_cfg = dict(TINY_MODEL_CFG, img_size=128, win_size=[16, 8, 2, 4])  # another size and windows
    moved = build_model(target_cfg)
    load_pretrained(moved, (state_of(source), {}), log=lambda *_: None)
    fresh = build_model(target_cfg)
    with flow.no_grad():
        for a, b in zip(source.modules(), fresh.modules()):
            if hasattr(a, "attention_centers"):
                b.attention_centers.copy_(a.attention_centers)
                b.attention_spreads.copy_(a.attention_spreads)
    for got, want in zip(pos_maps(moved), pos_maps(fresh)):
        assert np.array_equal(got, want)
    for i, w in enumerate(target_cfg["win_size"]):
        assert np.array_equal(moved.levels[i].encoder[0].gate_unit.pos.rel_indices.numpy(),
                              quadratic_relative_indices(w))
    # the same Gaussian, extended: pre-softmax scores agree at the offsets both windows hold
    for i in range(4):
        scores = []
        for model in (source, moved):
            pos = model.levels[i].encoder[0].gate_unit.pos
            with flow.no_grad():
                s = flow.matmul(pos.rel_indices, pos.position_projection().transpose(0, 1)).numpy()  # (N, N, S)
            feats = pos.rel_indices.numpy()
            scores.append({(int(f[0]), int(f[1])): s[m, n] for m, n, f in
                           ((m, n, feats[m, n]) for m in range(len(feats)) for n in range(len(feats)))})
        common = set(scores[0]) & set(scores[1])
        assert len(common) == min(len(scores[0]), len(scores[1]))
        for d in common:
            np.testing.assert_allclose(scores[1][d], scores[0][d], rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------- posmlp_t -> 384 px
def test_posmlp_t_weights_fine_tune_posmlp_t_384(tmp_path, caplog):
    """posmlp_t (224, windows 14-14-14-7) safetensors -> create_model("posmlp_t_384", weights=): forward and one
    AdamW step at 384 (about 10 s on 2 cores)."""
    source = create_model("posmlp_t")
    state = state_of(source)
    path = str(tmp_path / "posmlp_t.safetensors")
    save_weights(state, path, {"model": source.config})
    with caplog.at_level(logging.WARNING, logger="oneflow_posmlp.checkpoint.transfer"):
        # no drop path: a dropped block (p = 0.1 at the last level) would get no gradient and fail the last check
        model = create_model("posmlp_t_384", weights=path, drop_path_rate=0.0)
    lines = [r.getMessage() for r in caplog.records if r.name == "oneflow_posmlp.checkpoint.transfer"]
    assert len(lines) == 3 and "windows [14, 14, 14, 7]" in lines[0] and "[12, 12, 12, 12]" in lines[0]
    assert any(line.startswith("weight transfer: rebuilt 24 x rel_indices") for line in lines)
    assert any(line.startswith("weight transfer: resized 24 x token_proj_n_bias: [1, 196, 1] -> [1, 144, 1] "
                               "(levels 0, 1, 2), [1, 49, 1] -> [1, 144, 1] (level 3)") for line in lines)
    assert set(model.weights_transfer) == {"rel_indices", "token_proj_n_bias"}
    got = state_of(model)
    for k in ("patch_embed.projs.0.weight", "levels.2.encoder.17.gate_unit.pos.attention_centers",
              "levels.3.encoder.1.gate_unit.pos.attention_spreads", "levels.3.encoder.1.proj_c_e.weight", "head.bias"):
        assert np.array_equal(got[k], state[k]), k
    x = flow.randn(1, 3, 384, 384)
    model.train()
    opt = flow.optim.AdamW(model.parameters(), lr=1e-4)
    loss = flow.nn.functional.cross_entropy(model(x), flow.tensor([3]))
    loss.backward()
    opt.step()
    assert np.isfinite(float(loss.numpy()))
    assert not np.array_equal(model.levels[3].encoder[1].gate_unit.pos.token_proj_n_bias.numpy(),
                              got["levels.3.encoder.1.gate_unit.pos.token_proj_n_bias"])


def test_fine_tune_recipe_builds_the_384_model():
    cfg = load_config(os.path.join(ROOT, "configs", "posmlp_t_384_ft.yaml"))
    assert cfg["model"]["win_size"] == [12, 12, 12, 12] and cfg["model"]["img_size"] == [384, 384]
    assert cfg["aug"]["crop_pct"] == 1.0 and cfg["train"]["epochs"] == 30 and cfg["train"]["weight_decay"] == 1e-8
    assert cfg["model"]["win_size"] != load_config(os.path.join(ROOT, "configs", "posmlp_t.yaml"))["model"]["win_size"]


# -------------------------------------------------------------------------------------- backbones, what does not fit
def test_features_only_backbone_takes_weights_of_other_windows(tmp_path):
    demo = load_config(DEMO)["model"]
    save_weights(state_of(build_model(demo)), tmp_path / "w")  # the demo classifier: 32 px, windows 4-4-2-1
    overrides = {k: demo[k] for k in ("embed_dims", "depths", "gamma", "mlp_ratio", "num_classes")}
    backbone = create_model("posmlp_t", weights=str(tmp_path / "w"), features_only=True, img_size=64,
                            win_size=[8, 8, 4, 2], **overrides)
    assert set(backbone.weights_transfer) == {"rel_indices", "token_proj_n_bias"}
    feats = backbone.eval()(flow.randn(1, 3, 128, 128))  # any multiple of 64 (stride x window of every level)
    assert [tuple(f.shape) for f in feats] == [(1, 16, 32, 32), (1, 32, 16, 16), (1, 64, 8, 8), (1, 128, 4, 4)]


def test_what_else_does_not_fit_is_still_the_clear_error():
    state = state_of(build_model(dict(TINY_MODEL_CFG)))
    target = build_model(dict(TINY_MODEL_CFG, win_size=[4, 4, 2, 2], gamma=[4, 4, 8, 16]))
    with pytest.raises(CheckpointError, match="does not fit the model") as err:
        load_pretrained(target, (state, {}), log=lambda *_: None)
    msg = str(err.value)
    assert "levels.0.encoder.0.gate_unit.pos.attention_centers: checkpoint [2, 2], model [4, 2]" in msg
    assert "rel_indices" not in msg and "token_proj_n_bias" not in msg  # the windows were carried over


def test_strict_loading_points_to_the_transfer():
    """The converter and other strict loads still refuse other windows, and say which loaders carry them over."""
    from oneflow_posmlp.checkpoint import load_into_model

    with pytest.raises(CheckpointError, match=r"the weights have windows \[8, 4, 4, 2\], the model \[4, 4, 2, 2\]: "
                                              r"create_model\(weights=\), train --init"):
        load_into_model(build_model(dict(TINY_MODEL_CFG, win_size=[4, 4, 2, 2])), state_of(build_model(TINY_MODEL_CFG)))


def test_stored_shift_masks_are_dropped_with_a_line():
    state = state_of(build_model(dict(TINY_MODEL_CFG)))
    state["levels.0.encoder.0.shift_mask"] = np.zeros((4, 64, 64), np.float32)
    lines = []
    target = build_model(dict(TINY_MODEL_CFG, win_size=[4, 4, 2, 2]))
    load_pretrained(target, (state, {}), log=lines.append)
    assert any(line.startswith("weight transfer: dropped 1 x shift_mask") for line in lines)


def test_weights_windows_are_read_from_the_shapes():
    assert weights_windows(state_of(build_model(lrpe_gated_cfg()))) == {0: 8, 1: 4, 2: 4, 3: 2}


# ------------------------------------------------------------------------------------------------------ the tools
@pytest.fixture(scope="module")
def weights_32px(tmp_path_factory):
    """The demo model's weights at 32 px (windows 4-4-2-1), safetensors with the class names."""
    path = str(tmp_path_factory.mktemp("w") / "demo32.safetensors")
    model = build_model(load_config(DEMO)["model"])
    save_weights(state_of(model), path, {"classes": ["circle", "cross", "square", "triangle"]})
    return path


def test_train_init_carries_32px_weights_to_64px(tiny_demo_root, weights_32px, tmp_path):
    from oneflow_posmlp.engine import Trainer

    cfg = load_config(DEMO, tiny_train_opts(tiny_demo_root, **{"train.epochs": 1, "data.limit_train_batches": 1})
                      + AT_64)
    trainer = Trainer(cfg, output_dir=str(tmp_path), init=weights_32px)
    trainer.fit()
    with open(tmp_path / "log_rank0.txt") as f:
        log = f.read()
    assert "weight transfer: rebuilt 4 x rel_indices" in log and "weight transfer: resized 4 x token_proj_n_bias" in log
    assert os.path.isdir(tmp_path / "last")


def test_eval_and_predict_take_weights_of_other_windows(tiny_demo_root, weights_32px, tmp_path, capsys):
    from oneflow_posmlp.cli import eval as eval_tool
    from oneflow_posmlp.cli import predict as predict_tool

    opts = ["--opts", *tiny_train_opts(tiny_demo_root), *AT_64]
    assert eval_tool.main(["-c", DEMO, "--weights", weights_32px, *opts]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1])["images"] == 16
    assert "weight transfer: rebuilt 4 x rel_indices" in err
    image = os.path.join(tiny_demo_root, "val", "circle")
    assert predict_tool.main(["-c", DEMO, "--weights", weights_32px, "--json", image, *opts]) == 0
    out, err = capsys.readouterr()
    assert len(json.loads(out)["predictions"]) == 4 and "weight transfer: resized 4 x token_proj_n_bias" in err


def test_export_takes_weights_of_other_windows(weights_32px, tmp_path, capsys):
    from oneflow_posmlp.export.onnx import OnnxUnavailable, import_oneflow_onnx

    try:
        import_oneflow_onnx()
    except OnnxUnavailable as err:
        pytest.skip(f"the onnx extra is not installed ({err})")
    from oneflow_posmlp.cli import export_onnx as export_tool

    onnx = str(tmp_path / "m.onnx")
    assert export_tool.main(["-c", DEMO, "--weights", weights_32px, "--out", onnx, "--opts", *AT_64]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out.strip().splitlines()[-1])
    assert report["input"] == [1, 3, 64, 64] and report["max_abs_diff_vs_oneflow"] <= 1e-4
    assert "weight transfer: rebuilt 4 x rel_indices" in err
