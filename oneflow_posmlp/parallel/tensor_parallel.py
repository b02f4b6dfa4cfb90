"""Tensor (model) parallelism for PosMLP: the plan the model declares, applied as SBP on its parameters.

Like LiBai's ``Linear(parallel="col" | "row")``, the layers declare how they split. Every PosMLP block
(:class:`~oneflow_posmlp.models.layers.PosMLPLayer`) carries ``tensor_parallel_plan``: its expanding channel
projection ``proj_c_e`` ``(C -> D)`` split by output columns (weight ``split(0)``), its contracting projection
``proj_c_s`` ``(D / chunks -> C)`` by input rows (weight ``split(1)``), and the attribute (``gate_sbp``) through
which it gathers its hidden activations. The classifier ``head`` is split by classes (weight ``split(0)``,
:data:`HEAD_PLAN`, the model-level rule). Everything else is ``broadcast``, the biases included: a ``split(0)``
bias (of ``proj_c_e`` or of ``head``) aborts OneFlow 0.9.0's nn.Graph on CPU (``register.cpp:75 Check failed:
separated_header_mem_ptr() == nullptr``) though it works eagerly, and a replicated bias costs only its size.

PoSGU's halves (``chunks``) and its LayerNorm take whole channel vectors, so each block gathers the hidden
activations before the gating unit (an explicit ``to_global`` to the gather SBP): the boxing OneFlow would
insert there by itself aborts an nn.Graph on CPU with the same check. ``proj_c_s`` then multiplies the
replicated gate output by its row-split weight, and OneFlow reduces the partial sums. The numbers are those
of one process (tests/test_parallel_layouts.py); the SBP of every parameter is checked by
tests/test_parallel_tensor_parallel.py.

Applying the plan fails (:class:`LayoutError`) when a name in it matches no ``nn.Linear`` (a renamed layer), when
the gather attribute is missing, or when no module declares a plan: nothing silently falls back to replication.
"""
import oneflow as flow
import oneflow.nn as nn

from .errors import LayoutError

COLUMNS, ROWS = "columns", "rows"
_WEIGHT_SBP = {COLUMNS: flow.sbp.split(0), ROWS: flow.sbp.split(1)}  # of an nn.Linear weight (out, in)
HEAD_PLAN = {COLUMNS: ("head",)}  # the classifier of a model with num_classes > 0: split by classes


def _linear(module, prefix, name):
    layer = getattr(module, name, None)
    if not isinstance(layer, nn.Linear):
        where = f"{type(module).__name__} {prefix or '(the model)'}"
        raise LayoutError(f"the tensor-parallel plan of {where} names the layer {name!r}, but it has no nn.Linear "
                          f"of that name (renamed?); update the plan (tensor_parallel_plan) with the layer")
    return layer


def tensor_parallel_plan(model):
    """``(sbps, gathers)``: ``{parameter name: SBP along the tensor-parallel axis}`` of the split parameters
    (every other parameter is ``broadcast``) and ``[(module, attribute)]`` where activations are gathered.
    Raises :class:`LayoutError` if a declared layer or gather attribute does not exist, or no block declares a
    plan."""
    sbps, gathers = {}, []
    plans = [(prefix, module, getattr(module, "tensor_parallel_plan", None)) for prefix, module in
             model.named_modules()]
    plans = [(prefix, module, plan) for prefix, module, plan in plans if plan]
    if not plans:
        raise LayoutError(f"no module of {type(model).__name__} declares a tensor_parallel_plan; tensor parallelism "
                          f"needs the blocks' plan (models/layers.py)")
    if getattr(model, "num_classes", 0) > 0:
        plans.append(("", model, HEAD_PLAN))
    for prefix, module, plan in plans:
        for kind, sbp in _WEIGHT_SBP.items():
            for name in plan.get(kind, ()):
                _linear(module, prefix, name)
                sbps[f"{prefix}.{name}.weight" if prefix else f"{name}.weight"] = sbp
        attr = plan.get("gather")
        if attr is not None:
            if not hasattr(module, attr):
                raise LayoutError(f"the tensor-parallel plan of {type(module).__name__} {prefix} gathers through "
                                  f"{attr!r}, which the module does not have; update its tensor_parallel_plan")
            gathers.append((module, attr))
    return sbps, gathers


def check_tensor_parallel(model, tp):
    """Raise :class:`LayoutError` unless the model's plan applies and ``tp`` divides every dimension it splits
    (hidden widths, classes)."""
    if tp <= 1:
        return
    sbps, _ = tensor_parallel_plan(model)
    params = dict(model.named_parameters())
    for name, sbp in sbps.items():
        axis = 0 if sbp == flow.sbp.split(0) else 1
        size = params[name].shape[axis]
        if size % tp:
            what = "num_classes" if name.startswith("head.") else "the block's hidden width (mlp_ratio x embed dim)"
            raise LayoutError(f"dist.tensor_parallel={tp} does not divide {what} {size} ({name}, dim {axis}); "
                              f"use a tensor_parallel degree that divides it")


def set_gate_sbp(model, sbp):
    """Make every block of the plan bring its activations to ``sbp`` (replicated channels) where it gathers."""
    for module, attr in tensor_parallel_plan(model)[1]:
        setattr(module, attr, sbp)
