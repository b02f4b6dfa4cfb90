"""One training step object per execution mode, with one interface for the trainer:

* ``run(x, y, keep, seed_step, agree=None) -> StepResult | None``: take one micro-batch (local tensors, after
  Mixup; ``keep``: this rank's drop-path keep masks ``(b, blocks)`` or None; ``seed_step``: ``(seed, update,
  micro)`` of :mod:`~oneflow_posmlp.engine.randomness`); returns None until the update's last micro-batch, then
  the update's result. The host reads the device once per update, none per micro-batch: the losses are summed
  on the device, and the update's scalars (loss sum, gradient norm, the loss scaler's finite flag or the graph's
  train step) go out as one float64 vector, read by ``agree(values) -> list`` (the trainer's agreement of all
  ranks, which adds its stop flags to the same collective and read) or here. The result (the optimizer has stepped, unless the result is not ``finite``: a non-finite loss or
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
import contextlib
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


def update_values(ctx, parts):
    """The scalars of an update (device tensors, local or global) as one float64 vector ``(len(parts),)``, the
    same on every rank (a global tensor's local copy: ``broadcast`` over all ranks), still on the device."""
    out = []
    for t in parts:
        t = t.to(flow.float64).reshape(1)
        if t.is_global:
            t = t.to_global(placement=ctx.all_placement, sbp=flow.sbp.broadcast).to_local()
        out.append(t.to(ctx.device))
    return flow.cat(out)


def _read(values, agree=None):
    """The update's one host read: ``agree(values)`` (the trainer's agreement of all ranks, which reads them with
    its own flags in one collective) or ``values`` read here. A list of floats."""
    return list(agree(values) if agree is not None else values.numpy().tolist())


# The named phases of EagerStep.run, in order: "inputs" (to_global of the micro-batch, the drop-path keep masks
# set), "forward" (autocast, criterion(model(x), y)), "backward", and at the update's last micro-batch "clipping"
# (unscale, clip), "read" (the update's one host read), "step" (the AdamW step, when applied), "zero_grad".
# A profiler marks them through EagerStep.phases (bench/profile.py).
RUN_PHASES = ("inputs", "forward", "backward", "clipping", "read", "step", "zero_grad")


def no_phase(name):
    """The default of :attr:`EagerStep.phases`: no marker, nothing added to the step (no read, no sync)."""
    return contextlib.nullcontext()


class EagerStep:
    """Forward and backward per micro-batch (the loss scaled by ``1 / accum``), then unscale, clip (by one
    global norm or per parameter group, ``clip_scope``), step and zero the gradients. ``phases``: a
    ``name -> context manager`` factory entered around each of :data:`RUN_PHASES` (default :func:`no_phase`)."""

    def __init__(self, model, criterion, optimizer, ctx, accum=1, clip_grad=0.0, clip_scope="global", amp=False):
        self.model, self.criterion, self.optimizer, self.ctx = model, criterion, optimizer, ctx
        self.accum, self.clip_grad, self.clip_scope, self.amp = accum, clip_grad, clip_scope, amp
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.drop_paths = drop_path_modules(model)
        self.scaler = DynamicLossScaler(enabled=amp)
        self.buffers = BufferSnapshot(model)
        self._loss_sum, self._micro = None, 0  # the update's summed losses (a device tensor) and micro-batches
        self.phases = no_phase  # name -> context manager around each phase of ``run`` (:data:`RUN_PHASES`)

    @property
    def loss_scale(self):
        return self.scaler.scale if self.amp else None

    def run(self, x, y, keep, seed_step, agree=None):
        ctx, phase = self.ctx, self.phases
        if not self._micro:  # the update's first micro-batch
            self.buffers.take()
        seed_oneflow(*seed_step)
        with phase("inputs"):
            x, y = ctx.to_global_batch(x, y)
            set_drop_path_keep(self.drop_paths, None if keep is None else ctx.to_global_batch(keep))
        with phase("forward"), autocast(self.amp, ctx.device):
            loss = self.criterion(self.model(x), y)
        with phase("backward"):
            self.scaler.scale_loss(loss / self.accum).backward()
        set_drop_path_keep(self.drop_paths, None)
        loss = loss.detach().to(flow.float64)  # summed on the device: no read per micro-batch
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        self._micro += 1
        if self._micro < self.accum:
            return None
        loss_sum, micro = ctx.replicate(self._loss_sum), self._micro
        self._loss_sum, self._micro = None, 0
        with phase("clipping"):
            scaler_finite = self.scaler.unscale(self.params)  # None without AMP; else a device flag, no read
            # logged: the norm of all gradients before clipping (a device scalar; the clipping needs no read either)
            norm = clip_gradients(self.optimizer, self.clip_grad, self.clip_scope, ctx.clip_grad_norm_)
        with phase("read"):
            parts = [loss_sum, norm, scaler_finite if scaler_finite is not None else flow.ones_like(loss_sum)]
            loss_sum, grad_norm, scaler_ok = _read(update_values(ctx, parts), agree)  # the update's one host read
        loss = loss_sum / micro
        finite = math.isfinite(loss)
        if self.amp:
            scaler_ok = bool(scaler_ok)
            self.scaler.update(scaler_ok)
            if not scaler_ok:  # an overflow: the scaler's business, no step and no norm
                grad_norm = float("nan")
        else:
            scaler_ok = True
            finite = finite and math.isfinite(grad_norm)
        with phase("step"):
            if finite and scaler_ok:
                self.optimizer.step()
        if not finite:
            self.buffers.restore()
        with phase("zero_grad"):
            self.optimizer.zero_grad()
        return StepResult(loss, loss_sum, micro, grad_norm, finite)

    def discard(self):
        if self._micro:
            self._loss_sum, self._micro = None, 0
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

    def run(self, x, y, keep, seed_step, agree=None):
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
        # with AMP the gradients (and so the graph's norm) carry the loss scale of this step: take it first
        scale = self._held_tensor("LossScale", self.graph.initial_loss_scale) if self.amp else None
        self.buffers.take()
        out = self.graph(x, y, *keep)
        loss_t, norm_t = out if self.graph.returns_grad_norm else (out, None)
        loss_t = ctx.replicate(loss_t).mean().to(flow.float64)
        if norm_t is None:
            norm_t = flow.full_like(loss_t, float("nan"))
        else:
            norm_t = ctx.replicate(norm_t).to(flow.float64)
            if scale is not None:
                norm_t = norm_t / scale
        step_t = self._held_tensor(TRAIN_STEP, self.updates + 1)
        loss, grad_norm, step = _read(update_values(ctx, [loss_t, norm_t, step_t]), agree)  # the one read
        step = int(step)
        stepped, self.updates = step > self.updates, step
        finite = math.isfinite(loss) and (self.amp or (stepped and (not self.graph.returns_grad_norm
                                                                    or math.isfinite(grad_norm))))
        if not finite:
            self.buffers.restore()
        return StepResult(loss, loss * self.accum, self.accum, grad_norm, finite)

    def _held_tensor(self, suffix, default):
        """The current value of the compiled graph's state variable named ``suffix`` (its train step, or its
        dynamic loss scale ``...-LossScale``), or ``default`` before the first call, as a float64 device scalar
        on every rank (not read here). Looked up in ``graph.state_dict()`` every time: a tensor kept from an
        earlier call can be stale (measured in the tensor-parallel graph: a copy on rank 0 that stayed at 1)."""
        if self.graph.compile_seconds is None:
            return flow.tensor(float(default), dtype=flow.float64, device=self.ctx.device)
        held = self.graph.state_dict()
        if suffix not in self._held:
            self._held[suffix] = next(k for k in held if k.endswith(suffix))
        t = self.ctx.gather(held[self._held[suffix]])  # wherever the graph placed it: a copy on every rank
        return t.reshape(-1)[0].to(flow.float64).to(self.ctx.device)

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
