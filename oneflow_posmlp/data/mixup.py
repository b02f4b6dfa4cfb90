"""Mixup/CutMix (flowvision's timm port) and the training loss that matches the targets it produces.

Use on each rank's LOCAL batch, before ``to_global``: ``x, soft = mixup(x, y)`` with ``x`` ``(B, 3, H, W)``
float and ``y`` ``(B,)`` int64 -> ``x`` mixed in place and ``soft`` ``(B, num_classes)`` float (label smoothing
folded in). ``B`` must be even. Only ``mode="batch"`` is allowed (one lambda per batch, as the official runs):
flowvision 0.2.1's ``elem``/``pair`` modes call ``np.bool``, which numpy >= 1.24 removed. The lambda and
the cutmix box come from NumPy's global RNG: seed it (the same seed on every rank gives every rank the
same lambda) and save its state for an exact resume.
"""
import oneflow as flow
from flowvision.data import Mixup
from flowvision.loss.cross_entropy import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from ..config import ConfigError

MIXUP_MODES = ("batch",)


def build_mixup(cfg):
    """flowvision ``Mixup`` from the config's ``aug:`` section, or ``None`` when ``aug.mixup`` and
    ``aug.cutmix`` are both 0 (or ``aug.mixup_prob`` is 0)."""
    a = cfg["aug"]
    if (a["mixup"] <= 0 and a["cutmix"] <= 0) or a["mixup_prob"] <= 0:
        return None
    if a["mixup_mode"] not in MIXUP_MODES:
        raise ConfigError(f"aug.mixup_mode {a['mixup_mode']!r} is not supported: flowvision 0.2.1's elem/pair "
                         f"modes use np.bool, removed in numpy 1.24; use aug.mixup_mode=batch")
    return Mixup(mixup_alpha=a["mixup"], cutmix_alpha=a["cutmix"], prob=a["mixup_prob"],
                 switch_prob=a["mixup_switch_prob"], mode=a["mixup_mode"], label_smoothing=a["smoothing"],
                 num_classes=cfg["model"]["num_classes"])


def build_train_criterion(cfg, mixup):
    """The official choice: soft-target cross entropy with Mixup/CutMix (smoothing is in the targets), else
    label-smoothing cross entropy when ``aug.smoothing > 0``, else plain cross entropy.
    ``(logits (B, C), targets (B,) int64 or (B, C) float) -> scalar loss``."""
    if mixup is not None:
        return SoftTargetCrossEntropy()
    if cfg["aug"]["smoothing"] > 0:
        return LabelSmoothingCrossEntropy(smoothing=cfg["aug"]["smoothing"])
    return flow.nn.CrossEntropyLoss()
