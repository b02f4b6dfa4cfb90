"""The CUDA-only Python logic, run here (no GPU) with CUDA reported available: only OneFlow's questions are
patched (``flow.cuda.is_available``, ``flow.cuda.device_count``, device names and memory), never a kernel, so
everything that would run on a GPU host before the first CUDA kernel runs here as it would there.

Other CUDA sites are tested beside their modules: the rank's device and placement (tests/test_parallel_devices.py),
SLURM's LOCAL_RANK (tests/test_slurm.py), the MFU peaks (tests/test_engine_mfu.py), the micro-batch guidance
(tests/test_engine_guidance.py), the OneFlow API the code names (tests/test_oneflow_api.py)."""
import shutil
import warnings

import numpy as np
import oneflow as flow
import pytest

from conftest import tiny_train_opts
from oneflow_posmlp.checkpoint import read_oneflow_checkpoint
from oneflow_posmlp.config import load_config
from oneflow_posmlp.engine import Trainer
from oneflow_posmlp.engine.state import rng_preserved, rng_state, set_rng_state


@pytest.fixture
def cuda_reported(monkeypatch):
    """OneFlow says two CUDA devices are there (a GPU host); any CUDA kernel would still fail."""
    monkeypatch.setattr(flow.cuda, "is_available", lambda: True)
    monkeypatch.setattr(flow.cuda, "device_count", lambda: 2)


def _draws():
    return flow.rand(4).numpy(), np.random.rand(2)


def test_rng_state_round_trip_with_cuda_reported(cuda_reported):
    saved = rng_state()
    assert set(saved) == {"python", "numpy", "oneflow"}  # no CUDA generator: reseeded per micro-batch
    first = _draws()
    set_rng_state(dict(saved, cuda=flow.zeros(8, dtype=flow.uint8)))  # a checkpoint naming a CUDA state loads
    again = _draws()
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    with rng_preserved():
        _draws()
    assert not np.array_equal(_draws()[0], again[0])  # the block left the generators where they were


def test_demo_run_with_cuda_reported_finishes_and_resumes_exactly(cuda_reported, tiny_demo_root, tmp_path,
                                                                  monkeypatch):
    """A CPU run on a GPU host (``dist.device=cpu``, CUDA reported): the epochs (rng_preserved), the evaluations,
    the checkpoints (rng_state) and a mid-epoch resume (set_rng_state) run, and the resumed run ends where the
    uninterrupted one did (dropout, drop path, Mixup/CutMix and EMA on)."""
    opts = tiny_train_opts(tiny_demo_root, **{"dist.device": "cpu", "train.epochs": 2, "output.save_every_steps": 1,
                                              "model.drop_rate": 0.1, "model.drop_path_rate": 0.1, "aug.mixup": 0.8,
                                              "aug.cutmix": 1.0})
    cfg = load_config("configs/demo.yaml", opts)
    full, mid = tmp_path / "full", tmp_path / "mid"
    real_save = Trainer.save

    def save(self, name):  # keep the checkpoint of update 6 (mid epoch 1) aside
        seconds = real_save(self, name)
        if name == "last" and self.updates == 6 and self.batch_in_epoch:
            shutil.copytree(full / "last", mid / "last")
        return seconds

    monkeypatch.setattr(Trainer, "save", save)
    top1 = Trainer(cfg, output_dir=str(full)).fit()
    monkeypatch.setattr(Trainer, "save", real_save)
    assert top1 >= 0 and (mid / "last").is_dir()

    resumed = Trainer(cfg, output_dir=str(mid), resume="auto")
    assert resumed.epoch == 1 and resumed.batch_in_epoch == 2
    resumed.fit()
    a, b = read_oneflow_checkpoint(str(full / "last")), read_oneflow_checkpoint(str(mid / "last"))
    assert a["updates"] == b["updates"] == 8
    for part in ("model", "ema"):
        for k, v in a[part].items():
            assert np.abs(v.numpy().astype(np.float64) - b[part][k].numpy()).max() <= 1e-6, (part, k)
