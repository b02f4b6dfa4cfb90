"""The eager forward's time by module kind, measured with forward hooks only.

A pre-hook and a post-hook on every module of a timed kind synchronise (OneFlow runs kernels
asynchronously) and read the clock; each kind gets its modules' **exclusive** time (a module's time minus
that of timed modules inside it). Nothing of the model is replaced: the hooks are registered for the
profile and the modules' hook dictionaries are restored afterwards (``models/hooks.py``).
``oneflow.profiler`` is not used: it aborts the process on a machine without a CUDA driver in OneFlow 0.9.0.

Kinds and what their exclusive time holds:

- the layers: ``LayerNorm`` (the CPU-fast ``models/norm.py`` one too), ``BatchNorm2d``, ``Linear`` (with the
  group-major weight gather of ``models.layers.Linear``), ``Conv2d`` (with its CPU bias add), ``GELU``;
- ``token mixing``: the group-wise batched matmuls, :class:`~oneflow_posmlp.models.token_mixing.GroupMix`
  (a parameterless module the positional maps call, so its time is its own);
- ``positional maps``: the rest of a GQPE/LRPE module: building the ``(Wm, S, N, N)`` map (in eval the cache
  check instead: maps are computed once per weights version), the gate and shift mask, the absolute bias;
- ``PoSGU rest`` (``chunk``, ``u * v``) and ``SGU`` (its dense mixing and gate; its norms are LayerNorm);
- ``block rest``: a PosMLP block's own operations (residual add, drop path; in shifted blocks the roll and
  their window partition/reverse);
- ``window partition/reverse``: a level's own operations, which are the window partition and reverse of its
  unshifted blocks and the level's two layout permutes (the functions of ``models/windows.py`` are plain
  calls, not modules: they are folded into the level that calls them rather than made modules);
- ``other``: the rest of the hooked forward (stem glue, pooling, head, dropout, top-level permutes).
"""
import time
from collections import defaultdict

import oneflow as flow
import oneflow.nn as nn

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
    (GroupMix, "token mixing (group_mix bmm)"),
    (TokenMap, "positional maps (GQPE/LRPE map, mask, bias)"),
    (PoSGU, "PoSGU rest (chunk, u*v)"),
    (SGU, "SGU (dense mixing, gate)"),
    (PosMLPLayer, "block rest (residual, drop path, shifts)"),
    (PosMLPLevel, "window partition/reverse (level permutes)"),
)
NOTE = ("eager forward, eval mode, no grad; exclusive time per module kind (forward hooks with a synchronisation "
        "at every timed boundary); % of the hooked forward")


def kind_of(module):
    """The profile kind of ``module``, or None when it is not timed on its own."""
    for cls, name in KINDS:
        if isinstance(module, cls):
            return name
    return None


class ExclusiveTimer:
    """Times nested regions; each region's own time (minus nested regions) goes to its kind."""

    def __init__(self):
        self.totals = defaultdict(float)
        self.stack = []  # [kind, start, time of nested regions]

    def enter(self, kind):
        sync()
        self.stack.append([kind, time.perf_counter(), 0.0])

    def exit(self):
        sync()
        kind, start, nested = self.stack.pop()
        spent = time.perf_counter() - start
        self.totals[kind] += spent - nested
        if self.stack:
            self.stack[-1][2] += spent


def _mean_forward(model, x, repeat):
    sync()
    start = time.perf_counter()
    for _ in range(repeat):
        model(x)
    sync()
    return (time.perf_counter() - start) / repeat


def profile_forward(model, x, repeat=3):
    """Eager forward time (eval mode, no grad) of ``model`` on the batch ``x`` by module kind (:data:`KINDS`):
    ``{"forward_ms", "hooked_forward_ms", "repeat", "batch_size", "by_kind_ms", "note"}``. ``forward_ms`` is an
    unhooked forward; the per-kind figures come from hooked ones (``hooked_forward_ms``: the synchronisation
    adds a little), sorted by time, with ``other`` the hooked forward's time outside every timed module.
    The model's train/eval mode and hooks are as before afterwards."""
    timer = ExclusiveTimer()

    def pre(m, inputs):
        timer.enter(kind_of(m))

    def post(m, inputs, out):
        timer.exit()

    was_training = model.training
    model.eval()
    try:
        with flow.no_grad():
            model(x)  # warm-up
            plain = _mean_forward(model, x, repeat)
            with forward_hooks((m, pre, post) for m in model.modules() if kind_of(m) is not None):
                model(x)  # warm-up with hooks
                timer.totals.clear()
                hooked = _mean_forward(model, x, repeat)
    finally:
        model.train(was_training)
    rows = {k: v / repeat * 1000 for k, v in timer.totals.items()}
    rows["other"] = max(hooked * 1000 - sum(rows.values()), 0.0)
    return {"forward_ms": plain * 1000, "hooked_forward_ms": hooked * 1000, "repeat": repeat,
            "batch_size": x.shape[0], "by_kind_ms": dict(sorted(rows.items(), key=lambda kv: -kv[1])), "note": NOTE}
