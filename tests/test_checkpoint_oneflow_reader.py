"""The restricted reader of flow.save directories (oneflow_posmlp/checkpoint/oneflow_reader.py): it rebuilds what
flow.save writes for this project, refuses anything else before it runs, and every entry point that takes a
OneFlow directory uses it (eval --weights [--ema], train --init / --resume, the converter's export)."""
import collections
import os
import pickle
import subprocess
import sys

import numpy as np
import oneflow as flow
import pytest

from conftest import TINY_MODEL_CFG, tiny_train_opts
from oneflow_posmlp.checkpoint import CheckpointError, UnsafeCheckpointError, load_weights, read_oneflow_checkpoint
from oneflow_posmlp.conversion import convert_torch_to_oneflow, export_oneflow_to_safetensors
from oneflow_posmlp.checkpoint.oneflow_io import save_oneflow_weights
from oneflow_posmlp.config import load_config
from oneflow_posmlp.engine import Trainer
from oneflow_posmlp.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def same(a, b, where=""):
    """``a`` (restricted reader) equals ``b`` (flow.load): same containers, keys, types, dtypes and values."""
    if isinstance(b, flow.Tensor):
        assert isinstance(a, flow.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert np.array_equal(a.numpy(), b.numpy()), where
    elif isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b), where
    elif isinstance(b, dict):
        assert type(a) is type(b) and list(a) == list(b), where
        for k in b:
            same(a[k], b[k], f"{where}/{k}")
    elif isinstance(b, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}/{i}")
    else:
        assert type(a) is type(b) and a == b, (where, a, b)


@pytest.fixture(scope="module")
def trained(tiny_demo_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run"))
    cfg = load_config("configs/demo.yaml", tiny_train_opts(tiny_demo_root, **{"train.epochs": 1,
                                                                             "data.limit_train_batches": 2}))
    Trainer(cfg, output_dir=out).fit()
    return out


def test_training_checkpoint_reads_as_flow_load_does(trained):
    path = os.path.join(trained, "last")
    got = read_oneflow_checkpoint(path)
    same(got, flow.load(path))
    assert got["classes"] == ["circle", "cross", "square", "triangle"]  # ImageFolder class names, for predict


def test_weights_directory_of_the_previous_converter_reads_as_flow_load_does(tmp_path):
    state = build_model(dict(TINY_MODEL_CFG)).state_dict()
    save_oneflow_weights(state, tmp_path / "w", meta={"model": TINY_MODEL_CFG, "source_sha256": "0" * 64})
    same(read_oneflow_checkpoint(tmp_path / "w"), flow.load(str(tmp_path / "w")))
    arrays, meta = load_weights(tmp_path / "w")
    assert list(arrays) == list(state) and meta["source_sha256"] == "0" * 64
    assert all(np.array_equal(arrays[k], v.numpy()) for k, v in state.items())


def test_training_checkpoint_gives_model_or_ema_weights_and_metadata(trained):
    path = os.path.join(trained, "last")
    ref = flow.load(path)
    for ema in (False, True):
        arrays, meta = load_weights(path, ema=ema)
        part = ref["ema" if ema else "model"]
        assert all(np.array_equal(arrays[k], v.numpy()) for k, v in part.items())
        assert meta["classes"] == ref["classes"] and meta["model"] == ref["config"]["model"]


def test_export_of_a_training_checkpoint_carries_model_config_and_classes(trained, tmp_path):
    path = os.path.join(trained, "last")
    export_oneflow_to_safetensors(path, tmp_path / "e.safetensors", ema=True, log=lambda *a: None)
    arrays, meta = load_weights(tmp_path / "e.safetensors")
    ref = flow.load(path)
    assert meta["weights"] == "ema" and meta["classes"] == ref["classes"] and meta["model"] == ref["config"]["model"]
    assert all(np.array_equal(arrays[k], v.numpy()) for k, v in ref["ema"].items())
    # converting that file again needs no --model (its metadata has the config) and keeps the class names
    _, again = convert_torch_to_oneflow(tmp_path / "e.safetensors", tmp_path / "c.safetensors", log=lambda *a: None)
    assert load_weights(tmp_path / "c.safetensors")[1]["classes"] == ref["classes"]
    assert again["model_from"] == "the safetensors metadata"


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def hostile_dir(path, shape, marker):
    """A directory shaped like a flow.save output whose pickle runs ``touch marker`` when unpickled."""
    if shape == "weights":
        data = collections.OrderedDict([("patch_embed.projs.0.weight", Evil(marker)), ("head.bias", 0)])
    else:  # a training checkpoint
        data = {"model": collections.OrderedDict(head=Evil(marker)), "ema": {"head": Evil(marker)}, "optimizer": {},
                "rng": {}, "epoch": 0, "config": {}}
    os.makedirs(path)
    with open(os.path.join(path, "pickled_data"), "wb") as f:
        pickle.dump({"protocol_version": 1, "data": data}, f)
    return str(path)


@pytest.mark.parametrize("shape", ["weights", "training"])
def test_hostile_directory_is_refused_naming_the_global(tmp_path, shape):
    marker = tmp_path / "pwned"
    path = hostile_dir(tmp_path / "evil", shape, marker)
    with pytest.raises(UnsafeCheckpointError, match="refusing to load global 'posix.system'"):
        read_oneflow_checkpoint(path)
    assert not marker.exists()


def _record(tmp_path, data):
    os.makedirs(tmp_path / "d", exist_ok=True)
    (tmp_path / "d" / "pickled_data").write_bytes(pickle.dumps({"protocol_version": 1, "data": data}))
    return tmp_path / "d"


def test_tensor_path_outside_the_directory_is_refused(tmp_path):
    flow.save({"w": flow.ones(2)}, str(tmp_path / "d"))
    name = next(p.name for p in (tmp_path / "d").iterdir() if p.is_dir())
    outside = "x" * (len(name) - 3)  # the same length: the pickle's frames stay valid
    flow.save({"w": flow.zeros(2)}, str(tmp_path / "s"))
    os.rename(next(p for p in (tmp_path / "s").iterdir() if p.is_dir()), tmp_path / outside)  # a real tensor dir
    raw = (tmp_path / "d" / "pickled_data").read_bytes()
    assert raw.count(name.encode()) == 1
    (tmp_path / "d" / "pickled_data").write_bytes(raw.replace(name.encode(), f"../{outside}".encode()))
    with pytest.raises(CheckpointError, match="not what flow.save writes"):
        read_oneflow_checkpoint(tmp_path / "d")


def test_missing_or_short_tensor_data_is_corrupt(tmp_path):
    save_oneflow_weights(build_model(dict(TINY_MODEL_CFG)).state_dict(), tmp_path / "w")
    victim = sorted(p for p in (tmp_path / "w").iterdir() if p.is_dir())[3]
    (victim / "out").write_bytes((victim / "out").read_bytes()[:-4])
    with pytest.raises(CheckpointError, match="wrong size.*incomplete or corrupt"):
        read_oneflow_checkpoint(tmp_path / "w")
    (tmp_path / "w" / "pickled_data").write_bytes((tmp_path / "w" / "pickled_data").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_oneflow_checkpoint(tmp_path / "w")


def test_numpy_object_arrays_are_refused(tmp_path):
    with pytest.raises(UnsafeCheckpointError, match="refusing numpy dtype"):
        read_oneflow_checkpoint(_record(tmp_path, {"rng": np.array([1, "x"], dtype=object)}))
    same(read_oneflow_checkpoint(_record(tmp_path, {"rng": ("MT19937", np.arange(4, dtype=np.uint32), 2, 0.5)})),
         {"rng": ("MT19937", np.arange(4, dtype=np.uint32), 2, 0.5)})


def tool(*args):
    res = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env=dict(os.environ, GLOG_minloglevel="3"))
    res.errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    return res


ENTRY_POINTS = {
    "eval --weights": lambda d, out, opts: ["tools/eval.py", "-c", "configs/demo.yaml", "--weights", d,
                                            "--opts", *opts, f"output.dir={out}"],
    "eval --weights --ema": lambda d, out, opts: ["tools/eval.py", "-c", "configs/demo.yaml", "--weights", d, "--ema",
                                                  "--opts", *opts, f"output.dir={out}"],
    "train --init": lambda d, out, opts: ["tools/train.py", "-c", "configs/demo.yaml", "--output", out, "--init", d,
                                          "--opts", *opts],
    "train --resume": lambda d, out, opts: ["tools/train.py", "-c", "configs/demo.yaml", "--output", out,
                                            "--resume", d, "--opts", *opts],
    "convert --src": lambda d, out, opts: ["tools/convert_torch_weights.py", "--src", d, "--dst", out],
}


@pytest.mark.parametrize("shape", ["weights", "training"])
@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_no_entry_point_runs_a_hostile_directory(tiny_demo_root, tmp_path, entry, shape):
    marker, out = tmp_path / "pwned", tmp_path / "out"
    path = hostile_dir(tmp_path / "evil", shape, marker)
    res = tool(*ENTRY_POINTS[entry](path, out, tiny_train_opts(tiny_demo_root)))
    assert not marker.exists()  # the payload did not run
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert len(res.errors) == 1 and "refusing to load global 'posix.system'" in res.errors[0], res.stderr[-2000:]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["evil"]  # nothing written
