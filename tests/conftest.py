"""Shared test configuration. ``import oneflow_posmlp`` must precede ``import oneflow`` (it preloads
the cuDNN/cuBLAS libraries of the nvidia wheels); the test process (and the jobs it launches) then takes the CPU
settings the tools set (``_env.prepare_process``), before any test imports OneFlow."""
import os
import pathlib

import oneflow_posmlp  # noqa: F401  (before oneflow)
from oneflow_posmlp._env import prepare_process

prepare_process()
import pytest

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
REFERENCE = FIXTURES / "reference"
REFERENCE_MODELS = ("tiny_gqpe", "tiny_lrpe", "tiny_lrpe_gated")
# the same architectures with parameters as a trained network holds them (PROVENANCE.md, "Trained-like models"):
# their outputs depend on the positional maps, so a wrong conversion shows
TRAINED_LIKE = REFERENCE / "trained_like"
TRAINED_LIKE_MODELS = ("tl_gqpe", "tl_lrpe", "tl_lrpe_gated")
ALL_REFERENCE_MODELS = REFERENCE_MODELS + TRAINED_LIKE_MODELS


def reference_file(name, suffix):
    """``tests/fixtures/reference[/trained_like]/NAME.SUFFIX`` of a reference model (``suffix``: json, npz, pth.tar)."""
    return (TRAINED_LIKE if name in TRAINED_LIKE_MODELS else REFERENCE) / f"{name}.{suffix}"

# A PosMLP small enough for OneFlow's CPU kernels: 64x64 input -> feature maps 16/8/4/2, which the
# windows 8/4/4/2 tile (levels 0 and 1 have several windows, so shifted windows apply there).
TINY_MODEL_CFG = dict(
    img_size=64,
    embed_dims=[8, 16, 32, 64],
    depths=[1, 1, 1, 1],
    win_size=[8, 4, 4, 2],
    gamma=[2, 4, 8, 16],
    mlp_ratio=[4, 4, 4, 2],
    num_classes=5,
    drop_path_rate=0.0,
)


@pytest.fixture
def tiny_model_cfg():
    return dict(TINY_MODEL_CFG)


@pytest.fixture(autouse=True, scope="session")
def _quiet_glog():
    os.environ.setdefault("GLOG_minloglevel", "2")
    yield


@pytest.fixture(scope="session")
def tiny_demo_root(tmp_path_factory):
    """A small demo shapes set (64 train / 16 val images) for training tests."""
    from oneflow_posmlp.data import ensure_demo_dataset

    return ensure_demo_dataset(str(tmp_path_factory.mktemp("demo") / "shapes"), train_per_class=16,
                               val_per_class=4, log=lambda *_: None)


def tiny_train_opts(root, **extra):
    """``--opts`` for a seconds-long run of configs/demo.yaml on ``tiny_demo_root``."""
    opts = {"data.root": root, "data.demo": "false", "data.num_workers": 0, "train.batch_size": 16,
            "train.epochs": 2, "train.warmup_epochs": 1, "log.progress": "false", "train.log_interval": 1}
    opts.update(extra)
    return [f"{k}={v}" for k, v in opts.items()]
