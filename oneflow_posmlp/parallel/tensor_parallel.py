"""Tensor (model) parallelism for PosMLP: the plan the model declares, applied as SBP on its parameters.

Like LiBai's ``Linear(parallel="col" | "row")``, the layers declare how they split. Every PosMLP block
(:class:`~oneflow_posmlp.models.layers.PosMLPLayer`) carries ``tensor_parallel_plan``: its expanding channel
projection ``proj_c_e`` ``(C -> D)`` split by output columns (weight ``split(0)``), its contracting projection
``proj_c_s`` ``(D / chunks -> C)`` by input rows (weight ``split(1)``, so its output is a partial sum, which the
block all-reduces through the attribute ``gate_sbp``), and its gating unit. The classifier ``head`` is split by
classes (weight ``split(0)``, :data:`HEAD_PLAN`, the model-level rule). Biases are ``broadcast``: a ``split(0)``
bias (of ``proj_c_e`` or of ``head``) aborts OneFlow 0.9.0's nn.Graph on CPU (``register.cpp:75 Check failed:
separated_header_mem_ptr() == nullptr``) though it works eagerly, and a replicated bias costs only its size.

Two ways to run the gating unit, ``dist.tensor_parallel_mode`` (:data:`MODES`):

- ``groups`` (the default): the gating unit runs split by channel groups. PoSGU is group-wise by
  construction: group ``s`` of the gated half ``u`` mixes tokens only with its own map ``P[s]`` and gates the
  channels of ``v`` at the same positions. Rank ``r`` of ``t`` takes groups ``[r S/t, (r+1) S/t)``: the gating
  unit's ``tensor_parallel_groups`` gives the order of ``proj_c_e``'s output rows such that block ``r`` of the
  split holds rank ``r``'s part of ``u`` and of ``v`` (group-major, as the one-process CPU path), the order of
  ``proj_c_s``'s input columns, and the per-group positional parameters, split by groups (GQPE's
  ``attention_centers``/``attention_spreads`` along dim 0, LRPE's table along dim 1). Each rank mixes and gates
  only its own channels; the hidden activations never move. PoSGU (as the official code) has no LayerNorm; the
  SGU baseline (``model.gate_unit: sgu``) normalises its gated chunk, and its LayerNorm reduces the per-token
  statistics across the ranks (``models/norm.py``: two scalars per token). The degree must divide every level's
  ``gamma`` (a :class:`LayoutError` names the level otherwise).
- ``gather``: each block gathers the hidden activations before the gating unit (an explicit ``to_global`` to
  ``gate_sbp``: the boxing OneFlow would insert there by itself aborts an nn.Graph on CPU with the same check),
  and every rank computes the whole gating unit on all channels.

**Stored order.** Under ``groups`` the parallel layout stores ``proj_c_e``'s weight and bias rows and
``proj_c_s``'s weight columns permuted (:attr:`Plan.orders`), so a plain ``split`` hands each rank its
channels. The permutation lives in the parallel layout only: the model built on one process, its state dict
and every checkpoint keep the official order (``ParallelContext`` applies the order when it places the
parameters and undoes it when it gathers them).

The numbers are those of one process (tests/test_parallel_layouts.py); the SBP and order of every parameter
are checked by tests/test_parallel_tensor_parallel.py. Applying the plan fails (:class:`LayoutError`) when a name
in it matches no ``nn.Linear`` (a renamed layer), when a declared attribute is missing, or when no module
declares a plan: nothing silently falls back to replication.
"""
import re
from collections import namedtuple

import numpy as np
import oneflow as flow
import oneflow.nn as nn

from .errors import LayoutError

COLUMNS, ROWS = "columns", "rows"
GROUPS, GATHER = "groups", "gather"
MODES = (GROUPS, GATHER)  # dist.tensor_parallel_mode
DEFAULT_MODE = GROUPS
_WEIGHT_SBP = {COLUMNS: flow.sbp.split(0), ROWS: flow.sbp.split(1)}  # of an nn.Linear weight (out, in)
HEAD_PLAN = {COLUMNS: ("head",)}  # the classifier of a model with num_classes > 0: split by classes

Plan = namedtuple("Plan", "sbps gathers orders parts")
Plan.__doc__ = """A model's tensor-parallel plan for one mode and degree.

``sbps``: ``{parameter name: SBP along the tensor-parallel axis}`` of the split parameters (every other one is
``broadcast``); ``gathers``: ``[(module, attribute)]`` through which blocks bring activations to replicated
channels; ``orders``: ``{parameter name: (axis, int64 order)}``, the parameters the parallel layout stores as
``index_select(axis, order)`` of the official tensor (``groups`` only); ``parts``: ``[(module, attribute)]``
that take the degree the gating unit is split into (``groups`` only)."""


def _linear(module, prefix, name):
    layer = getattr(module, name, None)
    if not isinstance(layer, nn.Linear):
        where = f"{type(module).__name__} {prefix or '(the model)'}"
        raise LayoutError(f"the tensor-parallel plan of {where} names the layer {name!r}, but it has no nn.Linear "
                          f"of that name (renamed?); update the plan (tensor_parallel_plan) with the layer")
    return layer


def check_mode(mode):
    if mode not in MODES:
        raise LayoutError(f"dist.tensor_parallel_mode must be one of {', '.join(MODES)}, got {mode!r}")


def tensor_parallel_plan(model, mode=DEFAULT_MODE, degree=2):
    """The :class:`Plan` of ``model`` for ``mode`` (:data:`MODES`) over ``degree`` tensor-parallel ranks.
    Raises :class:`LayoutError` if a declared layer or attribute does not exist, no block declares a plan, or
    (``groups``) a gating unit does not split over ``degree`` ranks (the message names the level)."""
    check_mode(mode)
    sbps, gathers, orders, parts = {}, [], {}, []
    plans = [(prefix, module, getattr(module, "tensor_parallel_plan", None)) for prefix, module in
             model.named_modules()]
    plans = [(prefix, module, plan) for prefix, module, plan in plans if plan]
    if not plans:
        raise LayoutError(f"no module of {type(model).__name__} declares a tensor_parallel_plan; tensor parallelism "
                          f"needs the blocks' plan (models/layers.py)")
    if getattr(model, "num_classes", 0) > 0:
        plans.append(("", model, HEAD_PLAN))
    for prefix, module, plan in plans:
        dot = f"{prefix}." if prefix else ""
        for kind, sbp in _WEIGHT_SBP.items():
            for name in plan.get(kind, ()):
                _linear(module, prefix, name)
                sbps[f"{dot}{name}.weight"] = sbp
        attr = plan.get("gather")
        if attr is not None:
            _attribute(module, prefix, attr, "gathers through")
            gathers.append((module, attr))
        if mode == GROUPS and plan is not HEAD_PLAN:
            _groups(model, prefix, module, plan, degree, sbps, orders, parts)
    return Plan(sbps, gathers, orders, parts)


def _attribute(module, prefix, attr, what):
    if not hasattr(module, attr):
        raise LayoutError(f"the tensor-parallel plan of {type(module).__name__} {prefix} {what} {attr!r}, which the "
                          f"module does not have; update its tensor_parallel_plan")


def _groups(model, prefix, module, plan, degree, sbps, orders, parts):
    """Add one block's ``groups`` plan: the stored order of its projections, its gating unit's split parameters."""
    if "groups" not in plan:
        raise LayoutError(f"dist.tensor_parallel_mode=groups, but the tensor-parallel plan of {type(module).__name__} "
                          f"{prefix} declares no 'groups' entry (gating unit, degree attribute); use "
                          f"dist.tensor_parallel_mode=gather or declare it")
    gate_name, parts_attr = plan["groups"]
    gate = getattr(module, gate_name, None)
    if not hasattr(gate, "tensor_parallel_groups"):
        raise LayoutError(f"the tensor-parallel plan of {type(module).__name__} {prefix} splits the gating unit "
                          f"{gate_name!r} by groups, but it has no such module with tensor_parallel_groups; update "
                          f"the plan, or use dist.tensor_parallel_mode=gather")
    _attribute(module, prefix, parts_attr, "sets the degree through")
    columns, rows = plan[COLUMNS][0], plan[ROWS][0]
    hidden = _linear(module, prefix, columns).out_features
    try:
        in_order, out_order, split = gate.tensor_parallel_groups(hidden, degree)
    except ValueError as err:
        level = re.match(r"levels\.(\d+)\.", prefix + ".")
        where = f"level {level.group(1)} ({prefix}.{gate_name})" if level else f"{prefix}.{gate_name}"
        gammas = (getattr(model, "config", None) or {}).get("gamma")
        every = f" (model.gamma: {list(gammas)})" if gammas is not None else ""
        raise LayoutError(f"dist.tensor_parallel={degree} with dist.tensor_parallel_mode=groups: in {where}, {err}; "
                          f"use a tensor_parallel degree that divides every level's gamma{every}, or "
                          f"dist.tensor_parallel_mode=gather") from None
    params = dict(module.named_parameters())
    dot = f"{prefix}." if prefix else ""
    for name, axis in split.items():
        if f"{gate_name}.{name}" not in params:
            raise LayoutError(f"the gating unit {dot}{gate_name} splits the parameter {name!r}, which it does not have")
        sbps[f"{dot}{gate_name}.{name}"] = flow.sbp.split(axis)
    layer = getattr(module, columns)
    orders[f"{dot}{columns}.weight"] = (0, in_order)
    if layer.bias is not None:
        orders[f"{dot}{columns}.bias"] = (0, in_order)
    if not np.array_equal(out_order, np.arange(len(out_order))):
        orders[f"{dot}{rows}.weight"] = (1, out_order)
    parts.append((module, parts_attr))


def check_tensor_parallel(model, tp, mode=DEFAULT_MODE):
    """Raise :class:`LayoutError` unless the model's plan for ``mode`` applies and ``tp`` divides every dimension it
    splits (hidden widths, classes, and under ``groups`` every level's ``gamma``)."""
    check_mode(mode)
    if tp <= 1:
        return
    plan = tensor_parallel_plan(model, mode, tp)
    params = dict(model.named_parameters())
    for name, sbp in plan.sbps.items():
        axis = next(k for k in range(params[name].ndim) if sbp == flow.sbp.split(k))
        size = params[name].shape[axis]
        if size % tp:
            what = ("num_classes" if name.startswith("head.") else "the block's hidden width (mlp_ratio x embed dim)"
                    if name.endswith(("proj_c_e.weight", "proj_c_s.weight")) else "the split dimension")
            raise LayoutError(f"dist.tensor_parallel={tp} does not divide {what} {size} ({name}, dim {axis}); "
                              f"use a tensor_parallel degree that divides it")


def configure_blocks(model, plan, sbp, degree):
    """Make every block of ``plan`` bring its activations to ``sbp`` (replicated channels) where it gathers, and
    (``groups``) split its gating unit into ``degree`` parts."""
    for module, attr in plan.gathers:
        setattr(module, attr, sbp)
    for module, attr in plan.parts:
        setattr(module, attr, degree)
