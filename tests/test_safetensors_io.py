"""safetensors reading/writing with numpy."""
import json
import struct

import numpy as np
import pytest

from oneflow_posmlp.checkpoint import CheckpointError, load_safetensors, save_safetensors


def test_roundtrip_keeps_dtypes_shapes_and_values(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {"w": rng.standard_normal((3, 4)).astype(np.float32), "h": np.arange(6, dtype=np.float16),
               "n": np.array(7, dtype=np.int64), "b": np.array([True, False]), "e": np.zeros((0, 2), np.float64)}
    path = tmp_path / "t.safetensors"
    save_safetensors(tensors, path, metadata={"format": "pt"})
    back, meta = load_safetensors(path, with_metadata=True)
    assert meta == {"format": "pt"} and list(back) == list(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and np.array_equal(back[k], v)


def test_bfloat16_is_widened_to_float32(tmp_path):
    values = np.array([1.0, -2.5, 3.140625], np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype("<u2")
    header = json.dumps({"x": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}).encode()
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bf16.tobytes())
    np.testing.assert_array_equal(load_safetensors(path)["x"], values)


def test_truncated_safetensors_is_refused(tmp_path):
    path = tmp_path / "t.safetensors"
    save_safetensors({"w": np.ones((64, 64), np.float32)}, path)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_safetensors(path)


def test_garbage_header_is_refused(tmp_path):
    path = tmp_path / "g.safetensors"
    path.write_bytes(struct.pack("<Q", 10 ** 12) + b"{}")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_safetensors(path)


def _lying(tmp_path, entries, data_len=64, header_len=None):
    header = json.dumps(entries).encode()
    path = tmp_path / "lie.safetensors"
    path.write_bytes(struct.pack("<Q", header_len or len(header)) + header + bytes(data_len))
    return path


GOOD = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}  # a valid first tensor: still nothing is read


@pytest.mark.parametrize("entry,needle", [
    ({"dtype": "F32", "shape": [4, 4], "data_offsets": [16, 80]}, "lies outside"),           # beyond the file
    ({"dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [16, 16]}, "wrong byte size"),  # huge shape
    ({"dtype": "F32", "shape": [1 << 32, 1 << 32], "data_offsets": [16, 16]}, "wrong byte size"),  # int64 wraps to 0
    ({"dtype": "F32", "shape": [-4], "data_offsets": [16, 16]}, "lies outside"),              # negative dimension
    ({"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}, "overlap"),                     # shares bytes with 'a'
    ({"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}, "lies outside"),                # before the data
    ({"dtype": "C64", "shape": [2], "data_offsets": [16, 32]}, "unsupported or malformed"),   # unknown dtype
    ({"dtype": "F32", "shape": "big", "data_offsets": [16, 32]}, "unsupported or malformed"),
    ("not an entry", "unsupported or malformed"),
])
def test_lying_header_is_refused_before_anything_is_read(tmp_path, monkeypatch, entry, needle):
    path = _lying(tmp_path, {"a": GOOD, "b": entry})

    def no_read(*args, **kwargs):
        raise AssertionError("a tensor was read before the header was checked")

    monkeypatch.setattr(np, "fromfile", no_read)
    with pytest.raises(CheckpointError, match=needle):
        load_safetensors(path)


def test_header_longer_than_the_file_is_refused(tmp_path):
    path = _lying(tmp_path, {"a": GOOD}, header_len=1000)
    with pytest.raises(CheckpointError, match="header length 1000 for a"):
        load_safetensors(path)


def test_metadata_must_be_strings(tmp_path):
    path = _lying(tmp_path, {"a": GOOD, "__metadata__": {"model": {"x": 1}}})
    with pytest.raises(CheckpointError, match="__metadata__ must map names to strings"):
        load_safetensors(path)


def test_disk_full_names_the_file_and_the_size_and_keeps_the_old_file(tmp_path, monkeypatch):
    import builtins
    import errno

    path = tmp_path / "w.safetensors"
    save_safetensors({"w": np.ones(4, np.float32)}, path)
    before = path.read_bytes()
    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(builtins, "open", lambda p, *a, **k: Full(real_open(p, *a, **k)) if str(p).endswith(".tmp")
                        else real_open(p, *a, **k))
    with pytest.raises(CheckpointError, match=f"no space left on the device while writing {path}: it needs about "
                                              f"4.0 MB"):
        save_safetensors({"w": np.ones(1 << 20, np.float32)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]
