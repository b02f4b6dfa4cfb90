"""One training step object per execution mode, with one interface for the trainer:

* ``run(x, y, keep, seed_step) -> StepResult | None``: take one micro-batch (local tensors, after Mixup;
  ``keep``: this rank's drop-path keep masks ``(b, blocks)`` or None; ``seed_step``: ``(seed, update, micro)``
  of :mod:`~oneflow_posmlp.engine.randomness`); returns None until the update's last micro-batch, then the
  update's result (the optimizer has stepped, unless the result is not ``finite``: a non-finite loss or
  gradient norm is never applied, in either mode; weights, AdamW moments, step count and the buffers the
  forward passes updated (BatchNorm statistics, :class:`BufferSnapshot`) stay as they were).
* ``discard()``: drop the micro-batches of an unfinished update (the end of an epoch).
* ``state_dict()`` / ``load_state_dict(state)``: ``{"optimizer": eager-format optimizer state, "scaler": ...}``,
  one format for both modes, so a checkpoint of one mode resumes in the other (``load_state_dict`` takes the
  training checkpoint, which also holds ``updates``).
* ``eval_forward(model)``: ``x -> logits`` for :func:`~oneflow_posmlp.engine.evaluate.evaluate` (None: eager).

:class:`EagerStep` runs forward and backward per micro-batch and clips and steps eagerly;
:class:`GraphStep` collects an update's micro-batches and runs them in one :class:`TrainGraph` call (lr schedule
and clipping inside the graph). The lr schedule and the EMA are the trainer's, alike for both.

:func:`build_training` builds the optimizer, the lr schedule and the step object of a config's ``train:``
section: the trainer and the benchmark (``oneflow_posmlp.bench``) both call it, so they run the same step.
"""
import math
from collections import namedtuple

import oneflow as flow

from ..config import ConfigError, scaled_lr
from ..models.drop import drop_path_keep, drop_path_modules, set_drop_path_keep
from .evaluate import eval_forward
from .graph import TRAIN_STEP, TrainGraph, graph_optimizer_state, load_graph_optimizer_state
from .loss_scaler import DynamicLossScaler, autocast
from .optim import build_optimizer, clip_gradients
from .randomness import drop_path_seed, seed_oneflow
from .schedule import build_scheduler, resolve_scheduler_kind

StepResult = namedtuple("StepResult", "loss loss_sum micro_batches grad_norm finite", defaults=(True,))
StepResult.__doc__ = """One update: ``loss`` the mean over its micro-batches (logged), ``loss_sum`` their sum,
``grad_norm`` the 2-norm of all gradients before clipping (NaN where unknown: a graph with gradient
accumulation, or an AMP overflow), ``finite``: the loss and the gradients were finite and the update was applied
(False: nothing was changed; with AMP only a non-finite loss counts, an overflow is the loss scaler's business).
The loss and the norm are values of global tensors: every rank reads the same number."""


class BufferSnapshot:
    """The model's buffers (BatchNorm running statistics and counters) as they were before an update: the forward
    passes of an update found non-finite must not leave their statistics behind. Local copies (each rank its
    own); buffers are small (a few values per channel of each BatchNorm)."""

    def __init__(self, model):
        self.buffers = list(model.buffers())
        self.saved = None

    def take(self):
        self.saved = [_local(b).clone() for b in self.buffers]

    def restore(self):
        for b, saved in zip(self.buffers, self.saved):
            _local(b).copy_(saved)


def _local(t):
    return t.to_local() if t.is_global else t


class EagerStep:
    """Forward and backward per micro-batch (the loss scaled by ``1 / accum``), then unscale, clip (by one
    global norm or per parameter group, ``clip_scope``), step and zero the gradients."""

    def __init__(self, model, criterion, optimizer, ctx, accum=1, clip_grad=0.0, clip_scope="global", amp=False):
        self.model, self.criterion, self.optimizer, self.ctx = model, criterion, optimizer, ctx
        self.accum, self.clip_grad, self.clip_scope, self.amp = accum, clip_grad, clip_scope, amp
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.drop_paths = drop_path_modules(model)
        self.scaler = DynamicLossScaler(enabled=amp)
        self.buffers = BufferSnapshot(model)
        self._losses = []

    @property
    def loss_scale(self):
        return self.scaler.scale if self.amp else None

    def run(self, x, y, keep, seed_step):
        ctx = self.ctx
        if not self._losses:  # the update's first micro-batch
            self.buffers.take()
        seed_oneflow(*seed_step)
        x, y = ctx.to_global_batch(x, y)
        set_drop_path_keep(self.drop_paths, None if keep is None else ctx.to_global_batch(keep))
        with autocast(self.amp, ctx.device):
            loss = self.criterion(self.model(x), y)
        self.scaler.scale_loss(loss / self.accum).backward()
        set_drop_path_keep(self.drop_paths, None)
        self._losses.append(float(ctx.replicate(loss).numpy()))
        if len(self._losses) < self.accum:
            return None
        losses, self._losses = self._losses, []
        loss = sum(losses) / len(losses)
        grad_norm = float("nan")
        finite = math.isfinite(loss)
        if self.scaler.unscale_and_check(self.params):  # logged: the norm of all gradients before clipping
            grad_norm = clip_gradients(self.optimizer, self.clip_grad, self.clip_scope, ctx.clip_grad_norm_)
            finite = finite and (self.amp or math.isfinite(grad_norm))
            if finite:
                self.optimizer.step()
        if not finite:
            self.buffers.restore()
        self.optimizer.zero_grad()
        return StepResult(loss, sum(losses), len(losses), grad_norm, finite)

    def discard(self):
        if self._losses:
            self._losses = []
            self.optimizer.zero_grad()

    def eval_forward(self, model):
        return None

    def state_dict(self):
        return {"optimizer": self.ctx.optimizer_state_to_official(self.optimizer.state_dict(), self.optimizer),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(self.ctx.optimizer_state_to_global(state["optimizer"], self.optimizer))
        self.scaler.load_state_dict(state["scaler"])


class GraphStep:
    """An update's micro-batches concatenated into one :class:`TrainGraph` call (the graph splits them again:
    gradient accumulation), with the lr schedule (``lr_scheduler``: OneFlow's) and clipping compiled in.
    Eval graphs of the trained model and its EMA share the modules (and so the weights).

    The graph returns the gradient norm with one micro-batch per update and without ZeRO (``engine/graph.py``:
    not with accumulation; ZeRO shards the gradients, CUDA only and not verified) and skips an update whose
    gradients are not finite; the graph's train step, read after every
    call, says whether it stepped."""

    def __init__(self, model, criterion, optimizer, lr_scheduler, ctx, accum=1, amp=False, zero_stage=0,
                 checkpoint_levels=()):
        self.model, self.optimizer, self.ctx, self.accum, self.amp = model, optimizer, ctx, accum, amp
        self.graph = TrainGraph(model, criterion, optimizer, lr_scheduler, grad_accum=accum, amp=amp,
                                zero_stage=zero_stage, checkpoint_levels=checkpoint_levels, ctx=ctx,
                                grad_norm=accum == 1 and not zero_stage)
        self.scaler = DynamicLossScaler(enabled=False)  # the graph scales inside; kept for the checkpoint format
        self.updates = 0  # the optimizer's step count: the graph's train step (eager checkpoints carry it)
        self._micro = []
        self._eval_graphs = {}
        self._held = {}  # the names of the graph's train step and loss scale variables
        self.buffers = BufferSnapshot(model)  # the graph updates the module's own buffer tensors

    loss_scale = None

    def run(self, x, y, keep, seed_step):
        self._micro.append((x, y) if keep is None else (x, y, keep))
        if len(self._micro) < self.accum:
            return None
        ctx = self.ctx
        x, y, *keep = (flow.cat(parts) for parts in zip(*self._micro))
        self._micro = []
        x, y = ctx.to_global_batch(x, y)
        keep = [ctx.to_global_batch(k) for k in keep]  # (B, blocks), with the images
        seed, update, _ = seed_step
        seed_oneflow(seed, update, 0)  # a graph's dropout draws from its compile-time seed
        # with AMP the gradients (and so the graph's norm) carry the loss scale of this step: read it first
        scale = self._held_value("LossScale", self.graph.initial_loss_scale) if self.amp else 1.0
        self.buffers.take()
        out = self.graph(x, y, *keep)
        loss_t, norm_t = out if self.graph.returns_grad_norm else (out, None)
        loss = float(ctx.replicate(loss_t).mean().numpy())
        grad_norm = float(ctx.replicate(norm_t).numpy()) / scale if norm_t is not None else float("nan")
        step = int(self._held_value(TRAIN_STEP, self.updates + 1))
        stepped, self.updates = step > self.updates, step
        finite = math.isfinite(loss) and (self.amp or (stepped and (norm_t is None or math.isfinite(grad_norm))))
        if not finite:
            self.buffers.restore()
        return StepResult(loss, loss * self.accum, self.accum, grad_norm, finite)

    def _held_value(self, suffix, default):
        """The current value of the compiled graph's state variable named ``suffix`` (its train step, or its
        dynamic loss scale ``...-LossScale``), or ``default`` before the first call. Looked up in
        ``graph.state_dict()`` every time: a tensor kept from an earlier call can be stale (measured in the
        tensor-parallel graph: a copy on rank 0 that stayed at 1)."""
        if self.graph.compile_seconds is None:
            return default
        held = self.graph.state_dict()
        if suffix not in self._held:
            self._held[suffix] = next(k for k in held if k.endswith(suffix))
        t = self.ctx.gather(held[self._held[suffix]])  # wherever the graph placed it: every rank reads it
        return float(t.numpy().reshape(-1)[0])

    def discard(self):
        self._micro = []

    def eval_forward(self, model):
        if id(model) not in self._eval_graphs:
            self._eval_graphs[id(model)] = eval_forward(model, self.ctx, graph=True, amp=self.amp)
        return self._eval_graphs[id(model)]

    def state_dict(self):
        state = graph_optimizer_state(self.graph, self.model, self.optimizer, self.updates)
        return {"optimizer": self.ctx.optimizer_state_to_official(state, self.optimizer),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state):
        """Before the graph's first call: it takes the moments and the step then."""
        opt_state = self.ctx.optimizer_state_to_global(state["optimizer"], self.optimizer)
        load_graph_optimizer_state(self.graph, self.model, self.optimizer, opt_state, self.ctx.all_placement)
        self.updates = int(opt_state["state"].get("step", state.get("updates", 0)))
        self.scaler.load_state_dict(state["scaler"])


def build_step(model, criterion, optimizer, scheduler, ctx, train_cfg, dist_cfg, amp, clip_scope):
    """The step object of ``train.graph``: :class:`GraphStep` (``scheduler.native`` compiled in) or
    :class:`EagerStep`."""
    t = train_cfg
    if t["graph"]:
        return GraphStep(model, criterion, optimizer, scheduler.native, ctx, accum=t["grad_accum_steps"], amp=amp,
                         zero_stage=dist_cfg["zero_stage"], checkpoint_levels=dist_cfg["activation_checkpointing"])
    return EagerStep(model, criterion, optimizer, ctx, accum=t["grad_accum_steps"], clip_grad=t["clip_grad"],
                     clip_scope=clip_scope, amp=amp)


Training = namedtuple("Training", "step optimizer scheduler lr amp clip_scope")
Training.__doc__ = """What :func:`build_training` builds: the step object, the AdamW optimizer, the lr schedule
(``step_update(updates)`` after every update), the scaled peak ``lr``, whether AMP runs (``train.amp`` on CUDA)
and the clipping scope (``global`` / ``group``)."""


def check_graph_options(train_cfg, dist_cfg):
    """The clipping scope (``global``/``group``) of the ``train:`` section; ConfigError where a graph cannot."""
    t, dist = train_cfg, dist_cfg
    if not t["graph"] and (dist["zero_stage"] or dist["activation_checkpointing"]):
        raise ConfigError("dist.zero_stage and dist.activation_checkpointing are nn.Graph options; set "
                          "train.graph=true, or leave them at 0 and []")
    if dist["zero_stage"] and dist["device"] == "cpu":
        raise ConfigError("dist.zero_stage > 0 on CPU: OneFlow 0.9.0 aborts such a graph (register.cpp:75 Check "
                          "failed: separated_header_mem_ptr() == nullptr); ZeRO is for CUDA runs, use "
                          "dist.zero_stage=0 on CPU")
    scope = t["clip_scope"] if t["clip_scope"] != "auto" else ("group" if t["graph"] else "global")
    if t["graph"] and resolve_scheduler_kind(t) == "timm":
        raise ConfigError("train.scheduler=timm with train.graph=true: a graph runs only OneFlow's schedulers; use "
                          "train.scheduler=oneflow (or auto), train.schedule_unit=epoch, or train.graph=false")
    return scope


def build_training(cfg, model, criterion, ctx, updates_per_epoch):
    """The optimizer (AdamW over the parameter groups, ``engine/optim.py``), the lr schedule and the step object
    (eager or graph, ``train.graph``) of ``cfg['train']`` for ``model``, already placed by ``ctx``
    (:meth:`~oneflow_posmlp.parallel.ParallelContext.apply`). ``updates_per_epoch`` shapes the schedule.
    Returns a :class:`Training`; raises ConfigError for graph options a run cannot take."""
    t = cfg["train"]
    clip_scope = check_graph_options(t, cfg["dist"])
    lr = scaled_lr(cfg)
    optimizer = build_optimizer(model, t, lr, graph=t["graph"], clip_scope=clip_scope)
    scheduler = build_scheduler(optimizer, t, lr, updates_per_epoch)
    amp = t["amp"] and ctx.device == "cuda"
    step = build_step(model, criterion, optimizer, scheduler, ctx, t, cfg["dist"], amp, clip_scope)
    return Training(step, optimizer, scheduler, lr, amp, clip_scope)


def micro_batch_keep(drop_paths, local_batch, ctx, seed_step):
    """This rank's rows of a micro-batch's drop-path keep masks, ``(local_batch, len(drop_paths))`` (a tensor),
    or None without drop path: drawn for the whole global batch from ``seed_step`` ``(seed, update, micro)``
    (``models/drop.py``), so every layout gets the masks of one process."""
    if not drop_paths:
        return None
    d = ctx.data_rank
    keep = drop_path_keep([m.drop_prob for m in drop_paths], local_batch * ctx.data_parallel,
                          drop_path_seed(*seed_step), rows=slice(d * local_batch, (d + 1) * local_batch))
    return flow.tensor(keep)
