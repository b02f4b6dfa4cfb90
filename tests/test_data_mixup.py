"""Mixup/CutMix from flowvision (batch mode) and the matching training loss."""
import numpy as np
import oneflow as flow
import pytest
from flowvision.loss.cross_entropy import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from oneflow_posmlp.config import load_config
from oneflow_posmlp.data import build_mixup, build_train_criterion


def cfg(*opts):
    return load_config("configs/demo.yaml", list(opts))


def test_official_mixup_mixes_on_cpu_local_tensors_with_smoothed_soft_targets():
    c = cfg("aug.mixup=0.5", "aug.cutmix=1.0", "aug.mixup_switch_prob=0.5", "aug.smoothing=0.1")
    mixup = build_mixup(c)
    assert mixup.mode == "batch" and mixup.mixup_alpha == 0.5 and mixup.cutmix_alpha == 1.0
    assert isinstance(build_train_criterion(c, mixup), SoftTargetCrossEntropy)
    np.random.seed(0)
    x = flow.randn(6, 3, 32, 32)
    y = flow.tensor([0, 1, 2, 3, 0, 1])
    orig = x.clone()
    mx, soft = mixup(x, y)
    assert tuple(soft.shape) == (6, 4) and soft.device == flow.device("cpu")
    assert np.allclose(soft.sum(1).numpy(), 1.0, atol=1e-6)
    assert (soft.numpy() >= 0.1 / 4 - 1e-6).all()  # label smoothing folded in
    assert not np.array_equal(mx.numpy(), orig.numpy())  # mixed
    loss = build_train_criterion(c, mixup)(flow.randn(6, 4), soft)
    assert loss.ndim == 0 and float(loss) > 0


def test_no_mixup_uses_label_smoothing_or_plain_cross_entropy():
    c = cfg("aug.mixup=0", "aug.cutmix=0", "aug.smoothing=0.1")
    assert build_mixup(c) is None
    assert isinstance(build_train_criterion(c, None), LabelSmoothingCrossEntropy)
    c = cfg("aug.mixup=0", "aug.cutmix=0", "aug.smoothing=0")
    assert isinstance(build_train_criterion(c, None), flow.nn.CrossEntropyLoss)
    assert build_mixup(cfg("aug.mixup=0.5", "aug.mixup_prob=0")) is None


def test_only_batch_mode_is_accepted():
    c = cfg("aug.mixup=0.5")
    c["aug"]["mixup_mode"] = "elem"  # past the schema (which rejects it) straight to the builder
    with pytest.raises(ValueError, match="np.bool"):
        build_mixup(c)
