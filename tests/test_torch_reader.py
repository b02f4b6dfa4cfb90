"""The torch-free reader: all formats agree, and hostile or broken files are refused without running code."""
import os
import pickle
import zipfile

import numpy as np
import pytest

from conftest import REFERENCE
from oneflow_posmlp.checkpoint import (CheckpointError, UnsafeCheckpointError, extract_state_dict, load_safetensors,
                                       load_torch_checkpoint)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _zip_with_pickle(path, payload, prefix="archive"):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{prefix}/data.pkl", payload)
        zf.writestr(f"{prefix}/version", "3\n")


def test_zip_legacy_and_safetensors_give_identical_weights():
    z = extract_state_dict(load_torch_checkpoint(REFERENCE / "tiny_gqpe.pth.tar"))
    legacy = extract_state_dict(load_torch_checkpoint(REFERENCE / "tiny_gqpe_legacy.pth"))
    flat = load_safetensors(REFERENCE / "tiny_gqpe.safetensors")
    assert list(z) == list(legacy) and set(z) == set(flat)
    for k, v in z.items():
        for other in (legacy[k], flat[k]):
            assert v.dtype == other.dtype and v.shape == other.shape and np.array_equal(v, other), k
    assert z["patch_embed.norms.0.num_batches_tracked"].dtype == np.int64
    assert z["patch_embed.norms.0.num_batches_tracked"].shape == ()


def test_timm_checkpoint_layout_is_rebuilt():
    ckpt = load_torch_checkpoint(REFERENCE / "tiny_lrpe.pth.tar")
    assert {"epoch", "arch", "state_dict", "state_dict_ema", "optimizer", "args", "metric"} <= set(ckpt)
    assert ckpt["args"].model_hyper["embed_dims"] == (16, 32, 64, 128)  # argparse.Namespace as a record
    ema = extract_state_dict(ckpt, ema=True)
    assert set(ema) == set(extract_state_dict(ckpt))


def test_module_prefix_is_stripped():
    sd = {"module.head.weight": np.zeros((2, 3), np.float32)}
    assert list(extract_state_dict({"state_dict": sd})) == ["head.weight"]


def test_ema_requested_but_absent_is_a_clear_error():
    with pytest.raises(CheckpointError, match="no 'state_dict_ema'.*drop --ema"):
        extract_state_dict({"state_dict": {"a": np.zeros(1)}}, ema=True)


@pytest.mark.parametrize("protocol", [2, 4])
def test_hostile_reduce_is_refused_and_never_runs(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    _zip_with_pickle(path, pickle.dumps({"state_dict": _Evil(marker)}, protocol=protocol))
    with pytest.raises(UnsafeCheckpointError, match=r"refusing to load global '(posix|os)\.system'"):
        load_torch_checkpoint(path)
    assert not marker.exists()


def test_hostile_legacy_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil_legacy.pth"
    with open(path, "wb") as f:
        for obj in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(obj, f, protocol=2)
        pickle.dump(_Evil(marker), f, protocol=2)
    with pytest.raises(UnsafeCheckpointError, match="system"):
        load_torch_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["tiny_gqpe.pth.tar", "tiny_gqpe_legacy.pth"])
def test_truncated_file_is_a_clear_error(tmp_path, name):
    data = (REFERENCE / name).read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated|corrupt"):
        load_torch_checkpoint(path)


def test_zip_missing_a_storage_record_is_named(tmp_path):
    src = zipfile.ZipFile(REFERENCE / "tiny_gqpe.pth.tar")
    victim = next(n for n in src.namelist() if "/data/" in n and not n.endswith(".pkl"))
    path = tmp_path / "incomplete.pth.tar"
    with zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            if item.filename != victim:
                dst.writestr(item, src.read(item.filename))
    with pytest.raises(CheckpointError, match=f"storage record '{victim}' is missing"):
        load_torch_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, this is not a checkpoint\n" * 10)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_torch_checkpoint(path)
