"""The run's training checkpoints, ``OUTPUT/last`` and ``OUTPUT/best``: written atomically
(``engine/state.py``), never with a non-finite value, and remembered (the newest good ones) so that a halt can
name the checkpoint to go back to.

Mid-epoch under data parallelism every rank's BatchNorm statistics (and their EMA) are its own until the epoch's
average (``ParallelContext.average_buffers``); a checkpoint then holds all of them (:func:`rank_buffers`), so a
mid-epoch resume on as many data-parallel ranks continues exactly.
"""
import os
import time

import oneflow as flow

from ..checkpoint.atomic import recover
from .nonfinite import nonfinite_fix
from .state import save_training_state
from .stop import NonFiniteHalt, any_rank


def resume_path(out, resume):
    """``(path or None, note)``: the checkpoint to resume from (``resume``: a directory, or ``"auto"`` for
    ``out/last`` if present), after :func:`recover` has put back one that a kill during its save left aside
    (``note`` says so, for the log)."""
    if not resume:
        return None, None
    path = os.path.join(out, "last") if resume == "auto" else resume
    recovered = recover(path)
    if resume == "auto" and not os.path.isdir(path):
        return None, recovered
    return path, recovered


class Checkpointer:
    """Writes ``out/<name>`` for one run. ``train_cfg``: the ``train:`` section (the fixes a halt names);
    ``budget``: the run's :class:`~oneflow_posmlp.engine.stop.TimeBudget` (every save's seconds are recorded)."""

    def __init__(self, out, ctx, train_cfg, budget):
        self.out, self.ctx, self.train_cfg, self.budget = out, ctx, train_cfg, budget
        self.last_good = None  # (path, epoch, update, validated) of the newest `last` with finite values
        self.best_good = None  # (path, epoch, update or None) of `best` (its validation loss was finite)

    def path(self, name):
        return os.path.join(self.out, name)

    def resumed(self, path, progress):
        """The run continues from the checkpoint ``path`` (its counters in ``progress``): it is the last good
        one, and ``out/best`` the best, when the run has one."""
        self.last_good = (path, progress.epoch, progress.updates, not progress.mid_epoch)
        if progress.best_epoch >= 0 and os.path.isdir(self.path("best")):
            self.best_good = (self.path("best"), progress.best_epoch + 1, None)

    def save(self, name, state, progress, validated=False):
        """Write the training checkpoint ``state`` as ``out/name`` (atomically), unless it holds a non-finite
        value: then nothing is written and :class:`NonFiniteHalt` is raised (on every rank). ``validated``: its
        validation loss is known to be finite (a ``last`` at the end of an evaluated epoch). A collective.
        Returns the seconds taken."""
        start = time.time()
        path = self.path(name)
        bad = nonfinite_parts(state, self.ctx)
        if bad:
            raise NonFiniteHalt(f"non-finite values in {', '.join(bad)} at epoch {progress.epoch} update "
                                f"{progress.updates}: {path} was not written; {self.last_good_text()}; "
                                f"{nonfinite_fix(self.train_cfg)}")
        save_training_state(path, state, self.ctx)
        if name == "last":
            self.last_good = (path, progress.epoch, progress.updates, validated)
        elif name == "best":
            self.best_good = (path, progress.epoch, progress.updates)
        seconds = time.time() - start
        self.budget.record("save", seconds)
        return seconds

    def last_good_text(self, validated=False):
        """Names the newest checkpoint with finite values (``validated``: also a finite validation loss; a `last`
        written mid-epoch since has replaced the last validated one, so then it is `best`)."""
        good = self.last_good if self.last_good and (self.last_good[3] or not validated) else self.best_good
        if good:
            path, epoch, update = good[:3]
            return f"the last good checkpoint is {path} (epoch {epoch}" + \
                (f", update {update})" if update is not None else ")")
        return "no checkpoint was written by this run (and it did not resume from one)"


def _tensors(obj):
    """The tensors in a (nested) state dict."""
    if isinstance(obj, flow.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def nonfinite_parts(state, ctx):
    """The parts of ``state`` (``model``, ``ema``, ``optimizer``) holding a NaN or an infinity on any rank: each
    rank checks its own (local) values, then one collective."""
    parts = ("model", "ema", "optimizer")
    flags = []
    for part in parts:
        tensors = [t.to_local() if t.is_global else t for t in _tensors(state.get(part))]
        tensors = [t for t in tensors if t.dtype.is_floating_point and t.numel()]
        flags.append(0.0 if not tensors else float(not bool(flow.stack([flow.isfinite(t).all() for t in tensors])
                                                              .all().numpy())))
    return [part for part, bad in zip(parts, any_rank(flags, ctx)) if bad]


def rank_buffers(modules, ctx, mid_epoch):
    """Every data-parallel rank's floating-point buffers of ``modules`` (``[(prefix, module)]``):
    ``{"data_parallel": dp, "buffers": {"<prefix>.<name>": (dp, ...) tensor}}``, or None when they agree (one
    data-parallel rank, or the end of an epoch, after their average). A collective."""
    if not (ctx.data_parallel > 1 and mid_epoch):
        return None
    rows = ctx.sbp(flow.sbp.split(0), flow.sbp.broadcast)
    buffers = {f"{prefix}.{name}": buf.to_local().unsqueeze(0).to_global(placement=buf.placement, sbp=rows)
               for prefix, module in modules for name, buf in module.named_buffers()
               if buf.dtype.is_floating_point}
    return {"data_parallel": ctx.data_parallel, "buffers": buffers}


def restore_rank_buffers(modules, ctx, saved):
    """Give every rank its own statistics of a mid-epoch checkpoint (:func:`rank_buffers`); with another
    data-parallel degree, their mean."""
    if not saved:
        return
    own = saved["data_parallel"] == ctx.data_parallel
    for prefix, module in modules:
        for name, buf in module.named_buffers():
            rows = saved["buffers"].get(f"{prefix}.{name}")
            local = buf.to_local() if buf.is_global else buf
            if rows is None or not local.numel():
                continue
            value = rows[ctx.data_rank] if own else rows.to(flow.float64).mean(0).to(rows.dtype)
            local.copy_(value.to(local.device))
