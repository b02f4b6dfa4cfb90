"""Ending a run early and resumably: stop signals, the wall-clock budget, and the agreement of all ranks.

A scheduler ends a job at its time limit or preempts it with a signal (SLURM: SIGTERM, or the ``--signal`` of
``sbatch``, commonly SIGUSR1) some seconds before SIGKILL. :class:`StopSignals` handles ``train.stop_signals``:
the handler only notes the first signal (and says so on stderr); a second one has the default action (the
process ends at once). :class:`TimeBudget` says when ``train.max_minutes`` leaves no room for the next update (or
evaluation) and the checkpoint after it. At every update boundary the trainer asks :meth:`StopControl.decide`:
one small collective (:func:`any_rank`) tells every rank whether any rank was signalled, ran out of time or saw a
non-finite loss or gradient norm, so all ranks stop (or skip) at the same update. The trainer then saves ``last``
and ends with :data:`EXIT_STOPPED` (docs/cluster.md holds the contract).
"""
import collections
import math
import os
import signal
import time

import oneflow as flow

from ..config.signals import CATCHABLE, resolve_signals  # noqa: F401  (re-exported)

EXIT_STOPPED = 75    # EX_TEMPFAIL: stopped early with a resumable `last`; resume me (0 stays "finished")
EXIT_NONFINITE = 3   # halted on a non-finite loss, gradient norm or validation loss; no checkpoint was written


class TrainingStopped(Exception):
    """The run stopped early at an update boundary; ``last`` holds it (exit :data:`EXIT_STOPPED`)."""
    exit_code = EXIT_STOPPED


class NonFiniteHalt(Exception):
    """A non-finite loss or gradient norm (``train.nonfinite: halt``, or ``skip`` past its patience), or validation
    loss: nothing was written (exit :data:`EXIT_NONFINITE`); the message names the update, the epoch and the last
    good checkpoint."""
    exit_code = EXIT_NONFINITE


def signal_name(signum):
    return signal.Signals(signum).name


class StopSignals:
    """Handlers for ``signums`` that only record the first signal; after it the signals get their default action
    back, so a second one ends the process at once (even inside a OneFlow call). Processes forked from this one
    (DataLoader workers) inherit the handler and ignore the signal: the training process ends them.
    ``install()`` / ``restore()`` (the previous handlers), or use as a context manager."""

    def __init__(self, signums):
        self.signums = list(signums)
        self.received = None  # the first signal number
        self._pid = os.getpid()
        self._previous = {}

    def install(self):
        self._pid = os.getpid()
        self.received = None
        for s in self.signums:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def restore(self):
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def __enter__(self):
        return self.install()

    def __exit__(self, *exc):
        self.restore()

    def _handle(self, signum, frame):
        if os.getpid() != self._pid:  # a forked DataLoader worker: the training process decides
            return
        if self.received is None:
            self.received = signum
            for s in self.signums:  # the next one is not caught: it ends the process at once
                signal.signal(s, signal.SIG_DFL)
            os.write(2, f"received {signal_name(signum)}: stopping at the next update boundary with a checkpoint "
                        f"(a second signal ends the process at once)\n".encode())


class TimeBudget:
    """``train.max_minutes`` from ``start`` (the process's start, as the scheduler counts): :meth:`exhausted` is
    true when the next piece of work (an update, or an evaluation with its checkpoints) and a checkpoint after it
    would not fit in what is left. Work is estimated from measured durations: the slowest of the last 20 updates,
    the last evaluation, the slowest save times 1.5 (before any save: the state's size at 50 MB/s, at least
    10 s); everything times :data:`MARGIN`."""

    MARGIN = 1.2
    FIRST_SAVE_MB_PER_S = 50.0

    def __init__(self, minutes, start, state_bytes=0):
        self.deadline = start + 60.0 * minutes if minutes > 0 else None
        self.updates = collections.deque(maxlen=20)
        self.saves = []
        self.eval_seconds = None
        self.state_bytes = state_bytes

    def record(self, kind, seconds):
        """``kind``: ``update``, ``save`` or ``eval``."""
        if kind == "update":
            self.updates.append(seconds)
        elif kind == "save":
            self.saves.append(seconds)
        else:
            self.eval_seconds = seconds

    def save_seconds(self):
        if self.saves:
            return 1.5 * max(self.saves)
        return max(10.0, self.state_bytes / (self.FIRST_SAVE_MB_PER_S * 1e6))

    def update_seconds(self):
        return max(self.updates) if self.updates else 0.0

    def eval_estimate(self, val_batches):
        """The last evaluation's duration, or before the first: ``val_batches`` forward passes at the cost of an
        update each."""
        if self.eval_seconds is not None:
            return self.eval_seconds
        return val_batches * (sum(self.updates) / len(self.updates) if self.updates else 0.0)

    def exhausted(self, next_seconds, saves_after=1, now=None):
        """Whether ``next_seconds`` of work, then ``saves_after`` checkpoints, would overrun the budget."""
        if self.deadline is None:
            return False
        now = time.time() if now is None else now
        return now + self.MARGIN * (next_seconds + saves_after * self.save_seconds()) >= self.deadline

    def left(self, now=None):
        return math.inf if self.deadline is None else self.deadline - (time.time() if now is None else now)


def any_rank(flags, ctx, values=None):
    """Per flag, whether it is set on any rank (``flags``: a list of numbers, summed over the ranks and returned):
    one collective of one small tensor; call it on every rank. No collective on one process.

    ``values``: a float64 device vector that is the same on every rank (an update's loss and gradient norm,
    ``engine/step.py``), appended to the result as rank 0 holds it: read in the same collective and the same
    host read (on one process, the one read)."""
    if values is None:
        if not ctx.distributed:
            return [float(f) for f in flags]
        t = flow.tensor([float(f) for f in flags]).to(ctx.device)
    else:
        head = flow.tensor([float(f) for f in flags], dtype=flow.float64, device=values.device)
        if ctx.distributed and ctx.rank != 0:
            values = flow.zeros_like(values)  # rank 0's copy alone: a sum of one value is that value, NaN included
        t = flow.cat([head, values])
        if not ctx.distributed:
            return t.numpy().tolist()
    t = t.to_global(placement=ctx.all_placement, sbp=flow.sbp.partial_sum).to_global(sbp=flow.sbp.broadcast)
    return t.to_local().numpy().tolist()


Decision = collections.namedtuple("Decision", "stop signalled nonfinite values counts", defaults=((), ()))
Decision.__doc__ = """What all ranks agreed at an update boundary: ``stop`` a reason (``"SIGTERM on rank 1"``,
``"train.max_minutes"``) or None; ``signalled`` ``{rank: signal name}``; ``nonfinite`` whether any rank saw a
non-finite loss or gradient norm at this update; ``values`` the read ``values`` :meth:`StopControl.decide` was
given; ``counts`` the ``counts`` summed over the ranks."""


class StopControl:
    """The stop signals and the budget of one run, agreed over the ranks of ``ctx`` at every update boundary."""

    def __init__(self, signals, budget, ctx):
        self.signals, self.budget, self.ctx = signals, budget, ctx

    def decide(self, nonfinite=False, next_seconds=0.0, saves_after=1, values=None, counts=()):
        """One collective on every rank: per rank the signal it received (0: none), whether its budget is spent
        (``next_seconds`` of work and ``saves_after`` checkpoints would not fit) and whether it saw a non-finite
        value; with ``values`` (a device vector, the same on every rank) those too, read in the same collective
        (:func:`any_rank`); ``counts`` (numbers per rank, e.g. corrupt images skipped) summed in it. Returns a
        :class:`Decision`."""
        ctx = self.ctx
        mine = [0.0] * ctx.world
        mine[ctx.rank] = float(self.signals.received or 0)
        late = self.budget.exhausted(next_seconds, saves_after)
        flags = mine + [float(late), float(bool(nonfinite))] + [float(c) for c in counts]
        summed = any_rank(flags, ctx, values)
        summed, read = summed[:len(flags)], tuple(summed[len(flags):])
        counted = tuple(int(round(c)) for c in summed[len(flags) - len(counts):])
        signalled = {r: signal_name(int(round(v))) for r, v in enumerate(summed[:ctx.world]) if v}
        stop = None
        if signalled:
            stop = _describe(signalled, ctx.world)
        elif summed[ctx.world]:
            stop = "train.max_minutes"
        return Decision(stop, signalled, bool(summed[ctx.world + 1]), read, counted)


def _describe(signalled, world):
    """``SIGTERM``, ``SIGTERM on rank 1``, ``SIGUSR1 on all 8 ranks``, ``SIGTERM on ranks 0, 3 and SIGUSR1 on rank
    5``."""
    if world == 1:
        return next(iter(signalled.values()))
    by_signal = {}
    for r, name in sorted(signalled.items()):
        by_signal.setdefault(name, []).append(r)
    parts = []
    for name, ranks in by_signal.items():
        if len(ranks) == world:
            parts.append(f"{name} on all {world} ranks")
        else:
            shown = ", ".join(map(str, ranks[:4])) + (f" (+{len(ranks) - 4} more)" if len(ranks) > 4 else "")
            parts.append(f"{name} on rank{'s' if len(ranks) > 1 else ''} {shown}")
    return " and ".join(parts)
