"""The update boundary: where all ranks agree (one collective, ``engine/stop.py``) whether to stop (a signal on
any rank, ``train.max_minutes``) and whether the update was finite, with the update's values read in the same
collective (``engine/step.py``: one host read per update), and the corrupt-image counts summed at an epoch's end.

The time budget asks whether the next piece of work fits with a checkpoint after it: the next update, or at the
epoch's end its evaluation and checkpoints.
"""
import math
import time


class UpdateBoundary:
    """``stop``: the run's :class:`~oneflow_posmlp.engine.stop.StopControl`; ``validation``: its
    :class:`~oneflow_posmlp.engine.validation.Validation` (the evaluation's cost at an epoch's end);
    ``train_set``: the training set (its ``skipped`` corrupt images, if it counts them)."""

    def __init__(self, stop, validation, train_set):
        self.stop, self.validation, self.train_set = stop, validation, train_set
        self._since = time.time()
        self._agreed = None

    def start(self):
        """An update begins now (its duration is recorded at the next boundary)."""
        self._since = time.time()

    def agree(self, values, epoch, epoch_end):
        """The step's ``agree`` (``engine/step.py``): the agreement with the update's device ``values`` read in its
        one collective; kept for :meth:`decide`, the values read returned to the step."""
        self._agreed = self._agreement(epoch, epoch_end, values=values)
        return self._agreed.values

    def decide(self, result, epoch, epoch_end):
        """The agreement of all ranks at this boundary: the one the step made with its values (:meth:`agree`),
        with the update's finiteness (the same on every rank: the values were read from one rank), or one made
        now. A :class:`~oneflow_posmlp.engine.stop.Decision`; at the epoch's end ``counts[0]`` is the corrupt
        images skipped on all ranks."""
        agreed, self._agreed = self._agreed, None
        if agreed is not None:
            return agreed._replace(nonfinite=agreed.nonfinite or not result.finite)
        return self._agreement(epoch, epoch_end, nonfinite=not result.finite)

    def between_epochs(self):
        """The agreement after an epoch's checkpoints, before the next epoch."""
        budget = self.stop.budget
        return self.stop.decide(next_seconds=budget.update_seconds())

    def _agreement(self, epoch, epoch_end, nonfinite=False, values=None):
        budget = self.stop.budget
        budget.record("update", time.time() - self._since)
        if epoch_end:
            evals = self.validation.forward_batches(epoch)
            next_seconds, saves = budget.eval_estimate(evals), 2 if evals else 1
        else:
            next_seconds, saves = budget.update_seconds(), 1
        counts = [getattr(self.train_set, "skipped", 0)] if epoch_end else []
        return self.stop.decide(nonfinite=nonfinite, next_seconds=next_seconds, saves_after=saves, values=values,
                                counts=counts)

    def stop_message(self, decision, progress, path, saved):
        """The line a stop logs: where, the checkpoint (``saved``: seconds its save took; None: ``last`` was written
        at the epoch's end), the budget left, and how to continue."""
        how = f"saved {path} in {saved:.1f} s" if saved is not None else f"{path} (written at the end of the epoch)"
        left = self.stop.budget.left()
        budget = ("" if not math.isfinite(left) else f"; {left:.1f} s of train.max_minutes left" if left >= 0
                  else f"; {-left:.1f} s past train.max_minutes")
        return (f"stopped ({decision.stop}) at epoch {progress.epoch} update {progress.updates} (batch "
                f"{progress.batch_in_epoch}): {how}{budget}; exit 75: continue with --resume auto")
