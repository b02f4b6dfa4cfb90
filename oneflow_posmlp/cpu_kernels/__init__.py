"""CPU kernels: forms of the model's layers that OneFlow 0.9.0 runs faster on CPU, applied to a built model.

``models/`` computes the official form on every device. :func:`apply_cpu_kernels` swaps, in place, the modules
that have a CPU kernel for a subclass computing the same function in the CPU-fast form (timm's ``set_fast_norm``
idea, per module): the swapped modules keep their parameters, buffers, names and shapes, so state dicts,
checkpoints and weight files are unchanged; :func:`remove_cpu_kernels` swaps them back.

============================  ===================================  ==========================================
model module                  CPU kernel                           form
============================  ===================================  ==========================================
``nn.GELU``                   :class:`.gelu.GELU`                  NumPy erf GELU, derivative kept for backward
``models.norm.LayerNorm``     :class:`.layer_norm.LayerNorm`       rows through the BatchNorm kernel
``nn.Conv2d`` (with bias)     :class:`.conv.Conv2d`                bias added after a bias-free convolution
``GQPE`` / ``LRPE``           :mod:`.token_bias`                   token bias with a trailing unit axis
``PosMLPLayer`` (PoSGU)       :mod:`.group_major`                  hidden channels in group-major order
``proj_c_e``, ``proj_c_s``    :class:`.group_major.GatheredLinear` their weight rows / columns gathered
============================  ===================================  ==========================================

One switch: the runs apply them on CPU (``ParallelContext.apply`` when ``dist.device: cpu``; ``posmlp-predict``)
unless ``dist.cpu_kernels: false`` or the environment has ``POSMLP_CPU_KERNELS=0``. Each kernel still checks its
input and falls back to the model's form where its form does not apply (CUDA tensors, graphs where noted, tensor
parallel splits). How close the two forms are: docs/model.md ("CPU kernels"); their speed: docs/benchmark.md.
"""
import os

import oneflow.nn as nn

from ..models.layers import PosMLPLayer
from ..models.norm import LayerNorm
from ..models.token_mixing import GQPE, LRPE
from .conv import Conv2d
from .gelu import GELU
from .group_major import GatheredLinear, GroupMajorPosMLPLayer
from .layer_norm import LayerNorm as CpuLayerNorm
from .token_bias import CpuGQPE, CpuLRPE

ENV = "POSMLP_CPU_KERNELS"

# {model class: its CPU kernel}; exact types (a subclass of a model class keeps its own forward)
KERNELS = {nn.GELU: GELU, LayerNorm: CpuLayerNorm, nn.Conv2d: Conv2d, GQPE: CpuGQPE, LRPE: CpuLRPE,
           PosMLPLayer: GroupMajorPosMLPLayer}
OFFICIAL = {**{kernel: model_cls for model_cls, kernel in KERNELS.items()}, GatheredLinear: nn.Linear}


def cpu_kernels_enabled(configured=True, environ=None):
    """The switch: ``configured`` (``dist.cpu_kernels``) and not ``POSMLP_CPU_KERNELS=0`` in the environment."""
    environ = os.environ if environ is None else environ
    return bool(configured) and environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def apply_cpu_kernels(model, enabled=True):
    """Swap every module of ``model`` that has a CPU kernel for it (in place; parameters and state dict
    unchanged); returns the number swapped. ``enabled`` (e.g. ``dist.cpu_kernels``) and ``POSMLP_CPU_KERNELS=0``
    turn it off (nothing swapped)."""
    if not cpu_kernels_enabled(enabled):
        return 0
    swapped = 0
    for module in model.modules():
        kernel = KERNELS.get(type(module))
        if kernel is None or (kernel is Conv2d and module.bias is None):
            continue
        module.__class__ = kernel
        if kernel is GroupMajorPosMLPLayer:
            module._group_major_orders = {}
            for proj in (module.proj_c_e, module.proj_c_s):
                proj.__class__ = GatheredLinear  # called with the gathering orders
        swapped += 1
    return swapped


def remove_cpu_kernels(model):
    """Undo :func:`apply_cpu_kernels`: the model's own (official) modules again; returns the number swapped back."""
    swapped = 0
    for module in model.modules():
        official = OFFICIAL.get(type(module))
        if official is not None:
            module.__class__ = official
            module.__dict__.pop("_group_major_orders", None)
            swapped += 1
    return swapped


def uses_cpu_kernels(model):
    """True when some module of ``model`` runs a CPU kernel."""
    return any(type(m) in OFFICIAL for m in model.modules())


__all__ = ["ENV", "KERNELS", "apply_cpu_kernels", "cpu_kernels_enabled", "remove_cpu_kernels", "uses_cpu_kernels"]
