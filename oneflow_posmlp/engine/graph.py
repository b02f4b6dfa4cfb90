"""nn.Graph-compiled steps (OneFlow 0.9.0): a train graph (forward, loss, backward, optimizer and lr
scheduler inside the graph) and an eval graph sharing the module.

Graph options follow the config: gradient clipping by norm (``clip_grad_max_norm`` on the optimizer's
parameter groups, ``engine/optim.py``, applied inside the graph; OneFlow 0.9.0 clips each parameter group by
that group's own norm, not by one norm over all groups: ``tests/test_graph.py`` shows the difference),
gradient accumulation, AMP with dynamic loss scaling (CUDA),
ZeRO sharding of optimizer state, activation checkpointing per level. A graph needs static input shapes:
train loaders drop the last batch, eval loaders pad.

Used by the trainer (``train.graph: true``) and ``tools/benchmark.py``; held to the eager step by
``tests/test_graph.py``. The lr schedule inside the graph is OneFlow's (``engine/schedule.py``).
"""
import logging
import time

import oneflow as flow
import oneflow.nn as nn

from ..models.drop import drop_path_modules, set_drop_path_keep
from .optim import clip_param_groups  # noqa: F401  (the parameter groups a graph clips by; engine/optim.py)

_log = logging.getLogger("oneflow_posmlp")


class TrainGraph(nn.Graph):
    """``graph(x, y) -> loss``: one compiled training step (or ``grad_accum`` micro-batches of one step)."""

    def __init__(self, model, criterion, optimizer, lr_scheduler=None, grad_accum=1, amp=False, zero_stage=0,
                 checkpoint_levels=(), ctx=None):
        super().__init__()
        self.model = model
        self.drop_paths = drop_path_modules(model)  # the modules themselves, to hand them the step's masks
        self.criterion = criterion
        if ctx is not None:
            ctx.set_graph_stages(self.model)  # pipeline parallel: a stage (and placement) per part of the model
        self.add_optimizer(optimizer, lr_sch=lr_scheduler)
        # OneFlow's graph fusions, as LiBai turns them on: adds into the producing op's output, weight decay and
        # gradient scaling into the AdamW update, casts with scales; with AMP (CUDA) one multi-tensor update
        # that also writes the float16 copy of the weights.
        self.config.allow_fuse_add_to_output(True)
        self.config.allow_fuse_model_update_ops(True)
        self.config.allow_fuse_cast_scale(True)
        if grad_accum > 1:
            self.config.set_gradient_accumulation_steps(grad_accum)
        if amp:
            self.config.enable_amp(True)
            self.config.enable_multi_tensor_update(True)
            self.config.enable_fused_model_update_cast(True)
            self.set_grad_scaler(flow.amp.GradScaler(init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5,
                                                     growth_interval=2000))
        if zero_stage:
            self.config.enable_zero(True, stage=zero_stage)
        for i in checkpoint_levels:  # recompute these levels' activations in the backward pass
            getattr(self.model.levels, str(i)).to(nn.graph.GraphModule).activation_checkpointing = True
        self.compile_seconds = None

    def build(self, x, y, *keep):
        """``keep``: optional drop-path keep masks ``(B, blocks)`` of the step (``models/drop.py``); without
        them the blocks draw their own inside the graph."""
        drop_paths = self.drop_paths if keep else []
        set_drop_path_keep(drop_paths, keep[0] if keep else None)
        loss = self.criterion(self.model(x), y)
        set_drop_path_keep(drop_paths, None)
        loss.backward()
        return loss

    def __call__(self, *args):
        if self.compile_seconds is None:
            start = time.perf_counter()
            out = super().__call__(*args)
            self.compile_seconds = time.perf_counter() - start
            _log.info(f"train graph compiled (and ran its first step) in {self.compile_seconds:.1f} s")
            return out
        return super().__call__(*args)


class EvalGraph(nn.Graph):
    """``graph(x) -> logits`` in eval mode, sharing the module (and so the weights) with a train graph."""

    def __init__(self, model, amp=False, ctx=None):
        super().__init__()
        self.model = model
        if ctx is not None:
            ctx.set_graph_stages(self.model)
        self.config.allow_fuse_add_to_output(True)
        if amp:
            self.config.enable_amp(True)

    def build(self, x):
        return self.model(x)


TRAIN_STEP = "System-Train-TrainStep"


def _param_names(model, optimizer):
    """Parameter names in the optimizer's index order (the keys of ``optimizer.state_dict()['state']``)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group.parameters]


def graph_optimizer_state(graph, model, optimizer, step):
    """The AdamW moments a compiled :class:`TrainGraph` holds (``model.<param>-m`` / ``-v``), as an eager
    ``optimizer.state_dict()``: checkpoints of graph and eager runs have one format and load into either."""
    held = graph.state_dict()
    state = {"step": int(step)}
    for i, name in enumerate(_param_names(model, optimizer)):
        m, v = held.get(f"model.{name}-m"), held.get(f"model.{name}-v")
        if m is not None and v is not None:
            state[i] = {"exp_avg": m, "exp_avg_sq": v}
    return {"state": state, "param_groups": optimizer.state_dict()["param_groups"]}


def load_graph_optimizer_state(graph, model, optimizer, opt_state, step_placement=None):
    """Give a not yet compiled :class:`TrainGraph` the moments and step of an eager-format optimizer state
    (whose tensors already have their parameters' placement and SBP)."""
    names = _param_names(model, optimizer)
    tensors = {}
    for idx, st in opt_state["state"].items():
        if isinstance(st, dict):
            tensors[f"model.{names[int(idx)]}-m"] = st["exp_avg"]
            tensors[f"model.{names[int(idx)]}-v"] = st["exp_avg_sq"]
    step = flow.tensor([int(opt_state["state"].get("step", 0))], dtype=flow.int64)
    if step_placement is not None:
        step = step.to_global(placement=step_placement, sbp=flow.sbp.broadcast)
    tensors[TRAIN_STEP] = step
    graph.load_state_dict(tensors, strict=False)
