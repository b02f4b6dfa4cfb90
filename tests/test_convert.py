"""PyTorch -> OneFlow conversion and back (tools/convert_torch_weights.py and its package functions): safetensors
by default, OneFlow directories on request; directories of the previous converter still load."""
import json
import os
import pickle
import re
import subprocess
import sys
import zipfile

import numpy as np
import oneflow as flow
import pytest

from conftest import REFERENCE, REFERENCE_MODELS, TRAINED_LIKE_MODELS, reference_file
from oneflow_posmlp.checkpoint import CheckpointError, load_safetensors, load_weights
from oneflow_posmlp.conversion import (VerificationError, convert_torch_to_oneflow,
                                               export_oneflow_to_safetensors, verify)
from oneflow_posmlp.checkpoint.oneflow_io import load_meta, load_oneflow_weights
from oneflow_posmlp.models import build_model, create_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "convert_torch_weights.py")
quiet = lambda *a, **k: None  # noqa: E731


def run_tool(*args):
    res = subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, GLOG_minloglevel="3"))
    # OneFlow itself prints a line about libibverbs at import; the tool's own message is the last line
    res.last_err = (res.stderr.strip().splitlines() or [""])[-1]
    return res


def verified(model, name):
    """verify() against reference ``name``: both outputs checked and within the tolerance (it raises otherwise)."""
    checks = verify(model, reference_file(name, "npz"))
    assert [c.name for c in checks] == ["logits_eval", "features_eval"] and all(c.ok for c in checks)
    return checks


CASES = [(reference_file(n, "pth.tar"), n, ema) for n in REFERENCE_MODELS + TRAINED_LIKE_MODELS
         for ema in (False, True)] + [
    (REFERENCE / "tiny_gqpe_legacy.pth", "tiny_gqpe", False), (REFERENCE / "tiny_gqpe.safetensors", "tiny_gqpe", False)]


@pytest.mark.parametrize("src,name,ema", CASES, ids=lambda v: getattr(v, "name", str(v)))
def test_every_reference_file_converts_and_verifies(tmp_path, src, name, ema):
    meta_json = json.loads(reference_file(name, "json").read_text())
    dst = tmp_path / "out.safetensors"
    # safetensors and the legacy file carry no args: the architecture comes from the model config
    cfg = None if src.name.endswith(".pth.tar") else meta_json["config"]["model"]
    model, meta = convert_torch_to_oneflow(src, dst, cfg, "test config", ema=ema, log=quiet)
    verified(model, name)
    # the written file loads strictly into a fresh model and gives the same logits; the header holds the metadata
    arrays, header = load_weights(dst)
    assert header["format"] == "pt" and header["weights"] == ("state_dict_ema" if ema else meta["weights"])
    assert header["model"] == meta["model"] and header["dropped_keys"] == []
    assert len(header["source_sha256"]) == 64 and header["model"]["embed_dims"] == [16, 32, 64, 128]
    fresh = build_model(header["model"])
    fresh.load_state_dict({k: flow.tensor(v) for k, v in arrays.items()}, strict=True)
    verified(fresh, name)


def test_oneflow_directory_on_request_loads_like_the_previous_version(tmp_path):
    """--format oneflow writes what the previous converter wrote by default (flow.save directory + posmlp_meta.json);
    such directories load through the restricted reader."""
    model, meta = convert_torch_to_oneflow(REFERENCE / "tiny_gqpe.pth.tar", tmp_path / "of", log=quiet,
                                           out_format="oneflow")
    assert (tmp_path / "of" / "pickled_data").is_file() and load_meta(tmp_path / "of")["model"] == meta["model"]
    fresh = build_model(meta["model"])
    fresh.load_state_dict(load_oneflow_weights(tmp_path / "of"), strict=True)
    verified(fresh, "tiny_gqpe")
    arrays, header = load_weights(tmp_path / "of")
    assert header["source_sha256"] == meta["source_sha256"] and set(arrays) == set(model.state_dict())


def test_create_model_with_weights(tmp_path):
    cfg = json.loads((REFERENCE / "tiny_gqpe.json").read_text())["config"]["model"]
    convert_torch_to_oneflow(REFERENCE / "tiny_gqpe.pth.tar", tmp_path / "w.safetensors", log=quiet)
    over = {k: v for k, v in cfg.items() if k != "name"}
    model = create_model("posmlp_t", weights=tmp_path / "w.safetensors", **over)
    verified(model, "tiny_gqpe")
    assert model.weights_meta["model"]["embed_dims"] == [16, 32, 64, 128]
    with pytest.raises(CheckpointError, match=r"w.safetensors: the checkpoint is of another model \(model.depths: "
                                              r"checkpoint \[1, 1, 2, 1\], config \[2, 2, 18, 2\]\)"):
        create_model("posmlp_t", weights=tmp_path / "w.safetensors")
    other = create_model("posmlp_t", weights=tmp_path / "w.safetensors", **dict(over, num_classes=3))
    assert tuple(other.head.weight.shape) == (3, 128)  # another classifier: freshly initialised, the rest loaded
    assert np.array_equal(other.norm.weight.numpy(), model.norm.weight.numpy())
    backbone = create_model("posmlp_t", weights=tmp_path / "w.safetensors", features_only=True, **over)
    assert np.array_equal(backbone.levels[0].encoder[0].proj_c_e.weight.numpy(),
                          model.levels[0].encoder[0].proj_c_e.weight.numpy())  # all but the final norm and head


def test_export_to_safetensors_is_what_the_official_model_loads(tmp_path):
    convert_torch_to_oneflow(REFERENCE / "tiny_lrpe_gated.pth.tar", tmp_path / "of", log=quiet, out_format="oneflow")
    export_oneflow_to_safetensors(tmp_path / "of", tmp_path / "back.safetensors", log=quiet)
    back = load_safetensors(tmp_path / "back.safetensors")
    from oneflow_posmlp.checkpoint import extract_state_dict, load_torch_checkpoint

    official = extract_state_dict(load_torch_checkpoint(REFERENCE / "tiny_lrpe_gated.pth.tar"))
    assert list(back) == list(official)  # same keys (strict=True loads), same order
    for k, v in official.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and np.array_equal(back[k], v), k
    _, meta = load_weights(tmp_path / "back.safetensors")
    assert meta["origin_sha256"] == load_meta(tmp_path / "of")["source_sha256"]
    assert meta["model"] == load_meta(tmp_path / "of")["model"] and meta["source_format"] == "oneflow directory"


def test_float16_output(tmp_path):
    convert_torch_to_oneflow(REFERENCE / "tiny_lrpe.pth.tar", tmp_path / "h", dtype="float16", log=quiet)
    state, meta = load_weights(tmp_path / "h")
    assert state["head.weight"].dtype == np.float16 and meta["dtype"] == "float16"
    assert state["levels.0.encoder.0.gate_unit.pos.window_relative_position_index"].dtype == np.int64


def test_shape_mismatch_lists_problems_and_writes_nothing(tmp_path):
    dst = tmp_path / "out"
    with pytest.raises(CheckpointError) as err:
        convert_torch_to_oneflow(REFERENCE / "tiny_gqpe.pth.tar", dst, {"name": "posmlp_t"}, "--model", log=quiet)
    msg = str(err.value)
    assert "shape mismatch: patch_embed.projs.0.weight: checkpoint [8, 3, 3, 3], model [48, 3, 3, 3]" in msg
    assert "missing in checkpoint: levels.0.encoder.1.norm.weight" in msg
    assert not dst.exists() and not list(tmp_path.iterdir())


def test_head_mismatch_needs_the_flag(tmp_path):
    cfg = json.loads((REFERENCE / "tiny_gqpe.json").read_text())["config"]["model"]
    cfg = dict(cfg, num_classes=3)
    with pytest.raises(CheckpointError, match="--allow-head-mismatch"):
        convert_torch_to_oneflow(REFERENCE / "tiny_gqpe.pth.tar", tmp_path / "a", cfg, "cfg", log=quiet)
    model, meta = convert_torch_to_oneflow(REFERENCE / "tiny_gqpe.pth.tar", tmp_path / "b", cfg, "cfg",
                                           allow_head_mismatch=True, log=quiet)
    assert sorted(meta["dropped_keys"]) == ["head.bias", "head.weight"]
    assert tuple(model.head.weight.shape) == (3, 128)


def verify_lines(stdout):
    """``{output: (max abs diff, allowed)}`` from the tool's ``verify NAME: max abs diff D (allowed A = ...)`` lines."""
    found = re.findall(r"^verify (\w+): max abs diff (\S+) \(allowed (\S+) = ", stdout, re.M)
    return {name: (float(diff), float(allowed)) for name, diff, allowed in found}


def test_cli_converts_and_verifies(tmp_path):
    res = run_tool("--src", reference_file("tl_gqpe", "pth.tar"), "--dst", tmp_path / "out", "--ema",
                   "--verify", reference_file("tl_gqpe", "npz"))
    assert res.returncode == 0, res.stderr
    lines = verify_lines(res.stdout)
    assert set(lines) == {"logits_eval", "features_eval"}, res.stdout
    for diff, allowed in lines.values():
        assert diff <= allowed
    # the allowance scales with the output: 1e-4 x max|ref| + 1e-6 (the features reach 7.7, the logits 0.50)
    assert lines["features_eval"][1] == pytest.approx(1e-4 * 7.717 + 1e-6, rel=1e-3)
    assert lines["logits_eval"][1] == pytest.approx(1e-4 * 0.4983 + 1e-6, rel=1e-3)
    assert "architecture from the checkpoint's args.model_hyper" in res.stdout


def test_cli_verify_fails_above_tolerance_naming_the_output(tmp_path):
    # the tiny_lrpe weights checked against tiny_gqpe's outputs: same shapes, different network
    res = run_tool("--src", REFERENCE / "tiny_lrpe.pth.tar", "--dst", tmp_path / "out",
                   "--verify", REFERENCE / "tiny_gqpe.npz")
    assert res.returncode == 1 and res.last_err.startswith(f"error: --verify {REFERENCE / 'tiny_gqpe.npz'}: the "
                                                           "converted model differs from the reference: logits_eval by ")
    assert "features_eval by " in res.last_err and "above the allowed" in res.last_err
    assert all(diff > allowed for diff, allowed in verify_lines(res.stdout).values()) and verify_lines(res.stdout)
    # a looser tolerance (as an absolute floor) passes the same pair: the limit is what the options say
    loose = run_tool("--src", REFERENCE / "tiny_lrpe.pth.tar", "--dst", tmp_path / "out2", "--verify",
                     REFERENCE / "tiny_gqpe.npz", "--atol", "100")
    assert loose.returncode == 0, loose.stderr


def test_verify_scales_with_the_outputs_and_names_what_failed(tmp_path):
    """The allowance is rtol x max|ref| + atol per output: a copy of the reference's outputs scaled by 10 needs a
    10x larger allowance; an output the npz does not hold is not checked; NaN fails."""
    model, _ = convert_torch_to_oneflow(reference_file("tl_lrpe", "pth.tar"), tmp_path / "w", log=quiet)
    ref = dict(np.load(reference_file("tl_lrpe", "npz")))
    checks = verified(model, "tl_lrpe")
    for scale in (10.0, 0.1):
        np.savez(tmp_path / "scaled.npz", input=ref["input"], logits_eval=ref["logits_eval"] * scale)
        with pytest.raises(VerificationError, match=r"logits_eval by \S+ \(max abs\), above the allowed") as err:
            verify(model, tmp_path / "scaled.npz")
        assert [c.name for c in err.value.checks] == ["logits_eval"]  # features_eval not in that npz: not checked
        got = err.value.checks[0]
        assert got.allowed == pytest.approx(1e-4 * abs(scale) * np.abs(ref["logits_eval"]).max() + 1e-6)
    np.savez(tmp_path / "shifted.npz", input=ref["input"], logits_eval=ref["logits_eval"],
             features_eval=ref["features_eval"] + 2 * checks[1].allowed)
    with pytest.raises(VerificationError) as err:
        verify(model, tmp_path / "shifted.npz")
    assert "features_eval by" in str(err.value) and "logits_eval by" not in str(err.value)
    np.savez(tmp_path / "nan.npz", input=ref["input"], logits_eval=np.full_like(ref["logits_eval"], np.nan))
    with pytest.raises(VerificationError, match="logits_eval by nan"):
        verify(model, tmp_path / "nan.npz")
    np.savez(tmp_path / "no_logits.npz", input=ref["input"])
    with pytest.raises(CheckpointError, match="needs an npz with 'input' and 'logits_eval'"):
        verify(model, tmp_path / "no_logits.npz")


def test_cli_refuses_hostile_checkpoint_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    src = tmp_path / "evil.pth.tar"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"state_dict": Evil()}, protocol=2))
    res = run_tool("--src", src, "--dst", tmp_path / "out", "--model", "posmlp_t")
    assert res.returncode == 2
    assert res.last_err.startswith("error: refusing to load global") and "Traceback" not in res.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind,needle", [("truncated", "truncated"), ("not_a_checkpoint", "not a PyTorch checkpoint"),
                                         ("missing_storage", "is missing from the zip"),
                                         ("shape_mismatch", "shape mismatch: patch_embed.projs.0.weight")])
def test_cli_broken_input_is_a_short_error(tmp_path, kind, needle):
    src = tmp_path / "broken.pth.tar"
    extra = []
    if kind == "truncated":
        data = (REFERENCE / "tiny_lrpe.pth.tar").read_bytes()
        src.write_bytes(data[: len(data) // 3])
    elif kind == "not_a_checkpoint":
        src.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    elif kind == "missing_storage":
        with zipfile.ZipFile(REFERENCE / "tiny_lrpe.pth.tar") as zin, zipfile.ZipFile(src, "w") as zout:
            victim = [n for n in zin.namelist() if "/data/" in n and not n.endswith(".pkl")][3]
            for item in zin.infolist():
                if item.filename != victim:
                    zout.writestr(item, zin.read(item.filename))
    else:
        src = REFERENCE / "tiny_lrpe.pth.tar"
        extra = ["--model", "posmlp_t"]
    res = run_tool("--src", src, "--dst", tmp_path / "out", *extra)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert needle in res.stderr and res.stderr.count("error: ") == 1  # one message (a mismatch lists its keys)
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    assert not (tmp_path / "out").exists()


def test_cli_config_goes_through_the_config_loader(tmp_path):
    """--config is loaded as for training (schema, --opts, ConfigError as one line), its model: section used."""
    import yaml

    model = json.loads((REFERENCE / "tiny_gqpe.json").read_text())["config"]["model"]
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({"model": dict(model, drop_path_rate=0.3)}))
    res = run_tool("--src", REFERENCE / "tiny_gqpe.pth.tar", "--dst", tmp_path / "out", "--config", cfg,
                   "--opts", "model.drop_path_rate=0.0", "--verify", REFERENCE / "tiny_gqpe.npz")
    assert res.returncode == 0, res.stderr
    assert f"architecture from --config {cfg}" in res.stdout
    assert load_weights(tmp_path / "out")[1]["model"]["drop_path_rate"] == 0.0  # --opts applied
    res = run_tool("--src", REFERENCE / "tiny_gqpe.pth.tar", "--dst", tmp_path / "bad", "--config", cfg,
                   "--opts", "train.lrr=1")
    assert res.returncode == 2 and "Traceback" not in res.stderr and res.stderr.count("error: ") == 1
    assert "error: unknown config key 'train.lrr'; did you mean 'train.lr'?" in res.stderr
    assert not (tmp_path / "bad").exists()
