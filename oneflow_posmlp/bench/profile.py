"""Where a step's time goes, by module kind: the eager forward (eval), and the eager train step's forward,
backward and optimizer phases.

**Forward** (:func:`profile_forward`): a pre-hook and a post-hook on every module of a timed kind synchronise
(OneFlow runs kernels asynchronously) and read the clock; each kind gets its modules' **exclusive** time (a
module's time minus that of timed modules inside it). **Backward** (:func:`profile_train_step`): the same
forward hooks also put a gradient hook (``Tensor.register_hook``) on each timed module's output, which marks
the start of that module's backward (its output's gradient is complete), and on its inputs, which marks the
end (their gradients are computed); every hook synchronises, and the time between two marks goes to the
module whose backward is innermost then. Parameter gradients, and under data parallelism their all-reduce
(OneFlow reduces a ``broadcast`` parameter's ``partial_sum`` gradient as it accumulates it), are computed
inside the backward of the module that owns them. Nothing of the model is replaced: the hooks are
registered for the profile and the modules' hook dictionaries are restored afterwards (``models/hooks.py``);
tensor hooks live on that step's tensors only. ``oneflow.profiler`` is not used: it aborts the process on a
machine without a CUDA driver in OneFlow 0.9.0.

Kinds and what their exclusive time holds:

- the layers: ``LayerNorm`` (the CPU kernel's too: normalisation and affine), ``BatchNorm2d``,
  ``Linear`` (with the group-major weight gather of ``cpu_kernels.group_major.GatheredLinear``), ``Conv2d`` (with its CPU bias
  add), ``GELU``, ``drop path`` (the per-sample scaling), ``dropout``;
- ``token mixing``: the group-wise batched matmuls and their permutes,
  :class:`~oneflow_posmlp.models.token_mixing.GroupMix` (a parameterless module the positional maps call, so
  its time is its own);
- ``positional maps``: the rest of a GQPE/LRPE module: building the ``(Wm, S, N, N)`` map (in eval the cache
  check instead: maps are computed once per weights version), the gate and shift mask, the absolute bias;
- ``PoSGU rest`` (``chunk``, the gating product ``u * v``) and ``SGU`` (its dense mixing and gate; its norms are
  LayerNorm);
- ``block rest``: a PosMLP block's own operations (the residual add; in shifted blocks the roll and their
  window partition/reverse);
- ``window partition/reverse``: a level's own operations, which are the window partition and reverse of its
  unshifted blocks and the level's two layout permutes (the functions of ``models/windows.py`` are plain
  calls, not modules: they are folded into the level that calls them rather than made modules);
- ``loss``: the criterion (soft-target or label-smoothing cross entropy);
- ``other``: the rest of the hooked forward (stem glue, pooling, head, top-level permutes) or backward.
"""
import contextlib
import time
from collections import defaultdict

import oneflow as flow
import oneflow.nn as nn

from ..engine.step import EagerStep
from ..models.drop import DropPath, Dropout
from ..models.hooks import forward_hooks
from ..models.layers import PosMLPLayer, PosMLPLevel
from ..models.posgu import SGU, PoSGU
from ..models.token_mixing import GroupMix, TokenMap
from .measure import sync

# First match wins (a module has one kind).
KINDS = (
    (nn.LayerNorm, "LayerNorm"),
    (nn.BatchNorm2d, "BatchNorm2d"),
    (nn.Linear, "Linear"),
    (nn.Conv2d, "Conv2d"),
    (nn.GELU, "GELU"),
    (DropPath, "drop path"),
    (Dropout, "dropout"),
    (GroupMix, "token mixing (group_mix bmm, permutes)"),
    (TokenMap, "positional maps (GQPE/LRPE map, mask, bias)"),
    (PoSGU, "PoSGU rest (chunk, u*v)"),
    (SGU, "SGU (dense mixing, gate)"),
    (PosMLPLayer, "block rest (residual, shifts)"),
    (PosMLPLevel, "window partition/reverse (level permutes)"),
)
LOSS = "loss"
OTHER = "other"
NOTE = ("eager forward, eval mode, no grad; exclusive time per module kind (forward hooks with a synchronisation "
        "at every timed boundary); % of the hooked forward")
TRAIN_NOTE = ("eager train update (the trainer's Updater and EagerStep), exclusive time per module kind: forward hooks, "
              "and gradient hooks on each timed module's output (its backward starts) and inputs (it ends), every "
              "hook synchronising; parameter gradients and their data-parallel all-reduce fall in the backward of "
              "the module owning them; % of the hooked step")
# "cpu": this process's CPU seconds (every thread: the Python thread and OneFlow's compute thread), which the other
# jobs of a shared machine hardly change (a process computes on one core); "wall": elapsed seconds.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
PHASES = ("inputs (to_global, drop-path masks)", "clipping (grad norm, scale)", "host read (the update's scalars)",
          "AdamW step", "zero_grad")


def kind_of(module):
    """The profile kind of ``module``, or None when it is not timed on its own."""
    for cls, name in KINDS:
        if isinstance(module, cls):
            return name
    return None


class Timeline:
    """Exclusive time of nested, possibly interleaved regions: ``push(token, key)`` opens a region, ``pop(token)``
    closes it (wherever it is in the stack; closing a closed token does nothing); the time between two events
    goes to the innermost open region's key (none open: not counted). Every event synchronises first."""

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self.totals = defaultdict(float)
        self.stack = []  # [(token, key)]
        self.last = None

    def _advance(self):
        sync()
        now = self.clock()
        if self.stack and self.last is not None:
            self.totals[self.stack[-1][1]] += now - self.last
        self.last = now

    def push(self, token, key):
        self._advance()
        self.stack.append((token, key))

    def pop(self, token):
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] is token:
                self._advance()
                del self.stack[i]
                return

    def close_all(self):
        self._advance()
        self.stack.clear()


class ExclusiveTimer:
    """Times nested regions; each region's own time (minus nested regions) goes to its kind."""

    def __init__(self, clock=time.perf_counter):
        self.timeline = Timeline(clock)
        self.totals = self.timeline.totals
        self.open = []

    def enter(self, kind):
        token = object()
        self.open.append(token)
        self.timeline.push(token, kind)

    def exit(self):
        self.timeline.pop(self.open.pop())


def _mean_forward(model, x, repeat, clock=time.perf_counter):
    sync()
    start = clock()
    for _ in range(repeat):
        model(x)
    sync()
    return (clock() - start) / repeat


def profile_forward(model, x, repeat=3, clock="wall"):
    """Eager forward time (eval mode, no grad) of ``model`` on the batch ``x`` by module kind (:data:`KINDS`):
    ``{"forward_ms", "hooked_forward_ms", "repeat", "batch_size", "by_kind_ms", "note"}``. ``forward_ms`` is an
    unhooked forward; the per-kind figures come from hooked ones (``hooked_forward_ms``: the synchronisation
    adds a little), sorted by time, with ``other`` the hooked forward's time outside every timed module.
    ``clock``: ``"wall"`` or ``"cpu"`` (:data:`CLOCKS`). The model's train/eval mode and hooks are as before
    afterwards."""
    tick = CLOCKS[clock]
    timer = ExclusiveTimer(tick)

    def pre(m, inputs):
        timer.enter(kind_of(m))

    def post(m, inputs, out):
        timer.exit()

    was_training = model.training
    model.eval()
    try:
        with flow.no_grad():
            model(x)  # warm-up
            plain = _mean_forward(model, x, repeat, tick)
            with forward_hooks((m, pre, post) for m in model.modules() if kind_of(m) is not None):
                model(x)  # warm-up with hooks
                timer.totals.clear()
                hooked = _mean_forward(model, x, repeat, tick)
    finally:
        model.train(was_training)
    rows = {k: v / repeat * 1000 for k, v in timer.totals.items()}
    rows[OTHER] = max(hooked * 1000 - sum(rows.values()), 0.0)
    return {"forward_ms": plain * 1000, "hooked_forward_ms": hooked * 1000, "repeat": repeat,
            "batch_size": x.shape[0], "by_kind_ms": dict(sorted(rows.items(), key=lambda kv: -kv[1])), "clock": clock,
            "note": NOTE}


# ----------------------------------------------------------------------------- the train step
def _grad_tensors(obj):
    """The tensors in a module's inputs or output (a tensor, or a tuple/list of them) that take gradients."""
    items = obj if isinstance(obj, (tuple, list)) else (obj,)
    return [t for t in items if isinstance(t, flow.Tensor) and t.requires_grad]


class _TrainHooks:
    """Forward and backward marks of every timed module (and the criterion) on one :class:`Timeline`, keyed
    ``(kind, "forward" | "backward")``."""

    def __init__(self, timeline, criterion=None):
        self.timeline = timeline
        self.criterion = criterion
        self.open = {}  # id(module) -> [(forward token, backward token)] (a module may be called more than once)

    def kind(self, m):
        return LOSS if m is self.criterion else kind_of(m)

    def pre(self, m, inputs):
        token, back = object(), object()
        self.open.setdefault(id(m), []).append((token, back))
        self.timeline.push(token, (self.kind(m), "forward"))
        ends = _grad_tensors(inputs)
        pending = set(range(len(ends)))

        def end(i):  # the backward of this call ends when every input's gradient is computed
            def hook(grad):
                pending.discard(i)
                if not pending:
                    self.timeline.pop(back)
            return hook

        for i, t in enumerate(ends):
            t.register_hook(end(i))

    def post(self, m, inputs, out):
        token, back = self.open[id(m)].pop()
        self.timeline.pop(token)
        kind = self.kind(m)
        inputs = {id(t) for t in _grad_tensors(inputs)}
        starts = [t for t in _grad_tensors(out) if id(t) not in inputs]  # an identity (dropout 0) has no backward

        def start(grad):  # the output's gradient is complete: this call's backward starts (once)
            if not started:
                started.append(True)
                self.timeline.push(back, (kind, "backward"))

        started = []
        for t in starts:
            t.register_hook(start)

    def hooks(self, model):
        mods = [m for m in model.modules() if kind_of(m) is not None]
        if isinstance(self.criterion, nn.Module):
            mods.append(self.criterion)
        return [(m, self.pre, self.post) for m in mods]


class _Phases:
    """The step object's phase markers (``EagerStep.phases``, ``engine/step.py``) as regions of ``timeline``: each
    phase a region of its :data:`PHASES` key, the forward and backward outside timed modules ``other``'s. The
    backward's end closes every open region (modules whose inputs take no gradient, like the stem, end with the
    backward) and opens ``base``, uncounted: the time between phases is not a phase."""

    KEYS = {"inputs": PHASES[0], "forward": (OTHER, "forward"), "backward": (OTHER, "backward"),
            "clipping": PHASES[1], "read": PHASES[2], "step": PHASES[3], "zero_grad": PHASES[4]}

    def __init__(self, timeline, base):
        self.timeline, self.base = timeline, base

    @contextlib.contextmanager
    def __call__(self, name):
        token = object()
        self.timeline.push(token, self.KEYS[name])
        try:
            yield
        finally:
            if name == "backward":
                self.timeline.close_all()
                self.timeline.push(self.base, None)
            else:
                self.timeline.pop(token)


def allreduce_ms(params, repeat=1):
    """Milliseconds to all-reduce one gradient per parameter of ``params`` (global, ``broadcast``) on their
    placement: ``partial_sum`` tensors of their shapes brought to ``broadcast``, each synchronised, as the
    data-parallel backward does; the best of ``repeat``. None for local parameters."""
    params = [p for p in params if p.is_global and all(s == flow.sbp.broadcast for s in p.sbp)]
    if not params:
        return None
    partial = [flow.sbp.partial_sum] * len(params[0].sbp)
    grads = [flow.zeros(p.shape, placement=p.placement, sbp=p.sbp).to_global(sbp=partial) for p in params]
    best = None
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        for g in grads:
            g.to_global(sbp=[flow.sbp.broadcast] * len(g.sbp))
        sync()
        spent = (time.perf_counter() - start) * 1000
        best = spent if best is None else min(best, spent)
    return best


def profile_train_step(updater, micro_batches, repeat=2, clock="wall", mixed=True):
    """The train update of ``updater`` (the trainer's update routine, :class:`~oneflow_posmlp.engine.update.Updater`,
    over an :class:`~oneflow_posmlp.engine.step.EagerStep`) on ``micro_batches`` ``[(x, y)]`` (one update;
    ``mixed``: Mixup already applied, as the benchmark's) by module kind and phase. Returns ``{"step_ms",
    "hooked_step_ms", "repeat", "batch_size", "forward_ms", "backward_ms", "by_kind_ms": {kind: {"forward": ms,
    "backward": ms}}, "phases_ms": {phase: ms}, "allreduce_ms", "note"}``: ``step_ms`` an unhooked update
    (``Updater.update``: drop-path masks, the step object's ``run``, the schedule; synchronised once at its end), the
    rest from hooked ones (mean of ``repeat``, after one unhooked and one hooked warm-up update), the phases marked
    through the step object's ``phases`` (:class:`_Phases`). ``allreduce_ms`` (several data-parallel ranks only):
    the gradients' all-reduce timed apart (it is part of the backward figures). The optimizer steps and the
    schedule moves as in training; hooks and the step's phase markers are as before afterwards. ``clock``:
    ``"wall"`` or ``"cpu"`` (:data:`CLOCKS`)."""
    step = updater.step
    if not isinstance(step, EagerStep):
        raise TypeError(f"profile_train_step times the eager step object (EagerStep), got {type(step).__name__}: "
                        f"build the training with train.graph=false")
    model = step.model
    tick = CLOCKS[clock]
    timeline = Timeline(tick)
    updates = [0]

    def update():
        updates[0] = updater.update(micro_batches, updates[0], mixed=mixed)[1]

    was_training, unmarked = model.training, step.phases
    model.train()
    try:
        update()  # warm-up
        sync()
        start = tick()
        for _ in range(repeat):
            update()
        sync()
        plain = (tick() - start) / repeat
        hooks = _TrainHooks(timeline, step.criterion)
        step.phases = _Phases(timeline, object())
        with forward_hooks(hooks.hooks(model)):
            update()  # warm-up with hooks
            timeline.totals.clear()
            sync()
            start = tick()
            for _ in range(repeat):
                timeline.stack.clear()
                timeline.last = None
                update()
            sync()
            hooked = (tick() - start) / repeat
    finally:
        step.phases = unmarked
        model.train(was_training)
    by_kind, phases = defaultdict(lambda: {"forward": 0.0, "backward": 0.0}), {}
    for key, seconds in timeline.totals.items():
        if key is None:
            continue
        ms = seconds / repeat * 1000
        if isinstance(key, tuple):
            by_kind[key[0]][key[1]] += ms
        else:
            phases[key] = ms
    by_kind = dict(sorted(by_kind.items(), key=lambda kv: -(kv[1]["forward"] + kv[1]["backward"])))
    return {"step_ms": plain * 1000, "hooked_step_ms": hooked * 1000, "repeat": repeat,
            "batch_size": sum(int(mb[0].shape[0]) for mb in micro_batches),
            "forward_ms": sum(v["forward"] for v in by_kind.values()),
            "backward_ms": sum(v["backward"] for v in by_kind.values()),
            "by_kind_ms": by_kind, "phases_ms": {p: phases.get(p, 0.0) for p in PHASES},
            "allreduce_ms": allreduce_ms(step.params) if step.ctx.data_parallel > 1 else None, "clock": clock,
            "note": TRAIN_NOTE}
