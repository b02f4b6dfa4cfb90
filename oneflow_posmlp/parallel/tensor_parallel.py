"""Tensor (model) parallelism for PosMLP, as SBP rules on the parameters of the one model definition.

Like LiBai's transformer MLP: in every PosMLP block the expanding channel projection ``proj_c_e``
``(C -> D)`` is split by output columns (weight ``split(0)``), the contracting projection ``proj_c_s``
``(D / chunks -> C)`` by input rows (weight ``split(1)``), and the classifier ``head`` by classes (weight
``split(0)``). Everything else is ``broadcast``, the biases included: a ``split(0)`` bias (of ``proj_c_e`` or
of ``head``) aborts OneFlow 0.9.0's nn.Graph on CPU (``register.cpp:75 Check failed:
separated_header_mem_ptr() == nullptr``) though it works eagerly, and a replicated bias costs only its size.

PoSGU's halves (``chunks``) and its LayerNorm take whole channel vectors, so each block gathers the hidden
activations before the gating unit (``PosMLPLayer.gate_sbp``, an explicit ``to_global``): the boxing OneFlow
would insert there by itself aborts an nn.Graph on CPU with the same check. ``proj_c_s`` then multiplies the
replicated gate output by its row-split weight, and OneFlow reduces the partial sums. The numbers are those
of one process (tests/test_parallel_layouts.py).
"""
import oneflow as flow

from .errors import LayoutError

# parameter-name suffix -> tensor-parallel SBP
_RULES = (
    (".proj_c_e.weight", flow.sbp.split(0)),
    (".proj_c_s.weight", flow.sbp.split(1)),
    ("head.weight", flow.sbp.split(0)),
)


def tensor_parallel_sbp(name):
    """The SBP of parameter ``name`` along the tensor-parallel axis."""
    for suffix, sbp in _RULES:
        if name.endswith(suffix):
            return sbp
    return flow.sbp.broadcast


def check_tensor_parallel(model, tp):
    """Raise :class:`LayoutError` unless ``tp`` divides every dimension it splits (hidden widths, classes)."""
    if tp <= 1:
        return
    for name, p in model.named_parameters():
        sbp = tensor_parallel_sbp(name)
        if sbp == flow.sbp.broadcast:
            continue
        axis = 0 if sbp == flow.sbp.split(0) else 1
        size = p.shape[axis]
        if size % tp:
            what = "num_classes" if name.startswith("head.") else "the block's hidden width (mlp_ratio x embed dim)"
            raise LayoutError(f"dist.tensor_parallel={tp} does not divide {what} {size} ({name}, dim {axis}); "
                              f"use a tensor_parallel degree that divides it")


def set_gate_sbp(model, sbp):
    """Make every PosMLP block bring its gating unit's input to ``sbp`` (replicated channels) explicitly."""
    for module in model.modules():
        if hasattr(module, "gate_sbp"):
            module.gate_sbp = sbp
