"""nn.Graph-compiled steps (OneFlow 0.9.0): a train graph (forward, loss, backward, optimizer and lr
scheduler inside the graph) and an eval graph sharing the module.

Graph options follow the config: gradient clipping by norm (``clip_grad_max_norm`` on the optimizer's
parameter groups, ``engine/optim.py``, applied inside the graph; OneFlow 0.9.0 clips each parameter group by
that group's own norm, not by one norm over all groups: ``tests/test_graph.py`` shows the difference),
gradient accumulation, AMP with dynamic loss scaling (CUDA),
ZeRO sharding of optimizer state, activation checkpointing per level. A graph needs static input shapes:
train loaders drop the last batch, eval loaders pad.

Non-finite updates are never applied: without AMP the graph still runs OneFlow's dynamic loss scaling, at a
constant scale of 1 (:func:`unit_scaler`), only for its check: when any gradient holds a NaN or an infinity,
every AdamW update op of the step is skipped (``skip_if``): weights, moments and the train step (from which the
graph's lr schedule and bias correction are computed) stay as they were; the step object sees that the train
step did not advance (``engine/step.py``). With one micro-batch per update the graph also returns the 2-norm of
all gradients before clipping, computed from the gradients in :meth:`TrainGraph.build` (with AMP: of the scaled
gradients; the step divides by the scale). With gradient accumulation it cannot: the micro-batch gradients run
at another time shape than the update, and OneFlow 0.9.0 refuses a graph output or a variable computed from
them ("Error: (1 vs 2)").

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


def unit_scaler():
    """Dynamic loss scaling at a constant 1 (growth factor 1, back-off 1): no scaling, only the skip of an update
    whose gradients are not finite."""
    return flow.amp.GradScaler(init_scale=1.0, growth_factor=1.0, backoff_factor=1.0, growth_interval=2 ** 30)


# OneFlow 0.9.0 graph options this graph leaves off, and why (docs/parallel.md, "Graph fusions"): every step of a
# graph runs with a loss scaler (AMP's dynamic one, or unit_scaler()), whose overflow check reaches each AdamW
# update op as its `skip_if` input and whose 1/scale as `scale_by_tensor`.
FUSIONS_LEFT_OFF = {
    "enable_fused_model_update_cast": "its pass (job_rewriter/fuse_model_update_cast_pass.cpp) rebuilds each "
                                      "adam_update op without its skip_if and scale_by_tensor inputs: a step whose "
                                      "float16 gradients overflowed would be applied, unscaled",
    "enable_multi_tensor_update": "its pass keeps skip_if and scale_by_tensor (job_rewriter/"
                                  "multi_tensor_model_update.cpp, AddScaleAndSkipLbn), but its kernels are CUDA-only: "
                                  "no test here can compile it, so it stays off until a GPU run checks it",
}


class TrainGraph(nn.Graph):
    """``graph(x, y) -> loss`` (``grad_norm``: ``(loss, grad_norm)``): one compiled training step (or ``grad_accum``
    micro-batches of one step). ``grad_norm`` needs ``grad_accum == 1`` (module docstring)."""

    def __init__(self, model, criterion, optimizer, lr_scheduler=None, grad_accum=1, amp=False, zero_stage=0,
                 checkpoint_levels=(), ctx=None, grad_norm=False):
        super().__init__()
        if grad_norm and grad_accum > 1:
            raise ValueError("a graph with gradient accumulation cannot return the gradient norm (OneFlow 0.9.0)")
        self.model = model
        self.drop_paths = drop_path_modules(model)  # the modules themselves, to hand them the step's masks
        self.criterion = criterion
        self.returns_grad_norm = grad_norm
        # where the squared norms of the parameters' gradients are summed: pipeline stages hold their own
        self._norm_placement = ctx.stage_placements[-1] if ctx is not None and ctx.pipeline_parallel > 1 else None
        if ctx is not None:
            ctx.set_graph_stages(self.model)  # pipeline parallel: a stage (and placement) per part of the model
        self.add_optimizer(optimizer, lr_sch=lr_scheduler)
        # OneFlow's graph fusions that keep the loss scaler's skip (docs/parallel.md, "Graph fusions"): adds into the
        # producing op's output, weight decay and gradient scaling into each AdamW update op, casts with scales.
        # Not the fused model-update cast nor the multi-tensor update (FUSIONS_LEFT_OFF).
        self.config.allow_fuse_add_to_output(True)
        self.config.allow_fuse_model_update_ops(True)
        self.config.allow_fuse_cast_scale(True)
        if grad_accum > 1:
            self.config.set_gradient_accumulation_steps(grad_accum)
        self.initial_loss_scale = 2.0 ** 16 if amp else 1.0
        if amp:
            self.config.enable_amp(True)
            self.set_grad_scaler(flow.amp.GradScaler(init_scale=self.initial_loss_scale, growth_factor=2.0,
                                                     backoff_factor=0.5, growth_interval=2000))
        else:
            self.set_grad_scaler(unit_scaler())  # skips non-finite updates (module docstring)
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
        if not self.returns_grad_norm:
            return loss
        return loss, self._grad_norm()

    def _grad_norm(self):
        """The 2-norm of all parameter gradients of this step, before the optimizer clips them, from the gradients
        ``loss.backward()`` made in :meth:`build` (lazy tensors). Under data parallelism a gradient is a partial
        sum over the ranks: it is reduced to its parameter's SBP here, and that reduced gradient is handed back to
        the optimizer (``.grad``), so the norm and the update share one all-reduce (reading the partial gradient
        twice made OneFlow 0.9.0 abort: ``op_graph.cpp:150 Check failed: it->second == nd_sbp``)."""
        squares = []
        for proxy in self.model.parameters():
            p = proxy.to(flow.Tensor)
            g = p.grad
            if g is None:
                continue
            if g.is_global and (g.sbp != p.sbp or g.placement != p.placement):
                g = g.to_global(placement=p.placement, sbp=p.sbp)
                p.grad = g
            g = g if g.dtype == flow.float32 else g.to(flow.float32)  # AMP: float16 gradients
            sq = (g * g).sum()
            if self._norm_placement is not None:
                broadcast = [flow.sbp.broadcast] * len(self._norm_placement.ranks.shape)
                sq = sq.to_global(placement=self._norm_placement, sbp=broadcast)
            squares.append(sq)
        return flow.sqrt(flow.stack(squares).sum())

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
