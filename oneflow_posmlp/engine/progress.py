"""Where a run is: the counters a training checkpoint carries and a resume restores, in one object.

The lr schedule and the data order are functions of these counters and the config (``updates``, ``epoch``,
``batch_in_epoch``), so a checkpoint stores the counters, not the schedule or the sampler.
"""
import dataclasses

from ..checkpoint import CheckpointError


@dataclasses.dataclass
class Progress:
    """The counters of a run. ``epoch``: the epoch being trained (epochs done); ``batch_in_epoch``: micro-batches
    of it trained; ``updates``: optimizer updates applied in all; ``loss_sum`` / ``loss_count``: the epoch's summed
    micro-batch losses and their number; ``best_top1`` / ``best_epoch``: the best validation top-1 so far (-1:
    none); ``nonfinite_skips`` / ``nonfinite_streak``: updates skipped as non-finite, in all and in a row now."""

    epoch: int = 0
    batch_in_epoch: int = 0
    updates: int = 0
    loss_sum: float = 0.0
    loss_count: float = 0.0
    best_top1: float = -1.0
    best_epoch: int = -1
    nonfinite_skips: int = 0
    nonfinite_streak: int = 0

    # absent from the checkpoints of earlier versions: their defaults
    OPTIONAL = ("nonfinite_skips", "nonfinite_streak")

    @classmethod
    def fields(cls):
        return [f.name for f in dataclasses.fields(cls)]

    def state_dict(self):
        """The counters, as a training checkpoint holds them (top-level keys of the checkpoint)."""
        return dataclasses.asdict(self)

    def load_state_dict(self, state):
        """Take the counters of a training checkpoint (its top-level keys)."""
        for name in self.fields():
            if name in state or name not in self.OPTIONAL:
                setattr(self, name, state[name])
            else:
                setattr(self, name, type(self).__dataclass_fields__[name].default)

    @property
    def mid_epoch(self):
        return self.batch_in_epoch > 0

    def applied(self, result):
        """An applied update's losses (a :class:`~oneflow_posmlp.engine.step.StepResult`); the non-finite streak
        ends. The update count is moved by :meth:`~oneflow_posmlp.engine.update.Updater.after_update`."""
        self.loss_sum += result.loss_sum
        self.loss_count += result.micro_batches
        self.nonfinite_streak = 0

    def skipped(self):
        """A non-finite update that was skipped."""
        self.nonfinite_skips += 1
        self.nonfinite_streak += 1

    def mean_loss(self):
        """The epoch's mean micro-batch loss so far."""
        return self.loss_sum / max(self.loss_count, 1)

    def end_epoch(self):
        self.epoch += 1
        self.batch_in_epoch, self.loss_sum, self.loss_count = 0, 0.0, 0.0

    def record_best(self, row):
        """Whether the evaluated epoch ``row`` (``epoch``, ``eval_top1``) is a new best; if so it becomes it."""
        if row.get("eval_top1", -1) <= self.best_top1:
            return False
        self.best_top1, self.best_epoch = row["eval_top1"], row["epoch"]
        return True


def check_data_order(state, path, batch_in_epoch, epoch, train_images, batch_size):
    """A mid-epoch resume skips the global batches already trained on: that needs the same data set and global
    batch (the data-parallel degree may change: rank r reads block r of every global batch). Raises
    CheckpointError naming what changed; ``state``: the checkpoint, ``batch_in_epoch``/``epoch`` its counters,
    ``train_images``/``batch_size`` the run's now."""
    if not batch_in_epoch:
        return
    saved = {"train images": state.get("train_images"),
             "train.batch_size": (state.get("config") or {}).get("train", {}).get("batch_size")}
    now = {"train images": train_images, "train.batch_size": batch_size}
    diff = [k for k in saved if saved[k] is not None and saved[k] != now[k]]
    if diff:
        raise CheckpointError(f"--resume {path}: cannot continue mid-epoch ({batch_in_epoch} batches into epoch "
                              f"{epoch}): {diff[0]} was {saved[diff[0]]}, now {now[diff[0]]}, so the rest of "
                              f"the epoch's order would differ; resume with the same data and global batch, or "
                              f"from a checkpoint written at the end of an epoch")
