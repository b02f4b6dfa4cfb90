"""The non-finite guard (``train.nonfinite``, docs/cluster.md): an update whose loss or gradient norm is not
finite on some rank was not applied by the step object; it is counted and stepped over (``skip``, up to
``train.nonfinite_patience`` in a row) or the run halts (:class:`~oneflow_posmlp.engine.stop.NonFiniteHalt`,
exit 3, nothing written). An epoch whose validation loss (or its EMA's) is not finite halts too, before its
checkpoints. Every message names the update, the newest good checkpoint and the settings to change.
"""
import math

from .stop import NonFiniteHalt


def nonfinite_fix(train_cfg, skip_helps=True):
    """What to change, only what differs from the current settings."""
    t = train_cfg
    fixes = [f"lower train.lr (now {t['lr']:g})"]
    if t["clip_grad"] <= 0:
        fixes.append("set train.clip_grad > 0 (e.g. 5.0)")
    if t["warmup_epochs"] <= 0:
        fixes.append("set train.warmup_epochs > 0")
    text = ", ".join(fixes[:-1]) + (" or " if len(fixes) > 1 else "") + fixes[-1]
    if skip_helps and t["nonfinite"] != "skip":
        text += "; to step over isolated bad batches set train.nonfinite=skip"
    return text


class NonFiniteGuard:
    """``train_cfg``: the ``train:`` section; ``checkpoints``: the run's
    :class:`~oneflow_posmlp.engine.checkpointer.Checkpointer` (the good checkpoint a halt names); ``monitor``:
    the run's :class:`~oneflow_posmlp.engine.monitor.Monitor` (a skip is logged and counted there)."""

    def __init__(self, train_cfg, checkpoints, monitor):
        self.train_cfg, self.checkpoints, self.monitor = train_cfg, checkpoints, monitor

    def not_applied(self, result, progress):
        """An update found non-finite (``result``: its :class:`~oneflow_posmlp.engine.step.StepResult`): count the
        skip, or raise :class:`NonFiniteHalt`."""
        t = self.train_cfg
        values = f"loss {result.loss:.4g}, grad_norm {result.grad_norm:.4g}"
        where = f"epoch {progress.epoch} update {progress.updates + 1}"
        if t["nonfinite"] == "skip":
            progress.skipped()
            self.monitor.nonfinite_skip(where, values, progress, t["nonfinite_patience"])
            if progress.nonfinite_streak < t["nonfinite_patience"]:
                return
            what = f"{progress.nonfinite_streak} non-finite updates in a row (train.nonfinite_patience), the last"
        else:
            what = "non-finite loss or gradient norm"
        raise NonFiniteHalt(f"{what} at {where} ({values}): stopped without writing a checkpoint; "
                            f"{self.checkpoints.last_good_text()}; "
                            f"{nonfinite_fix(t, skip_helps=t['nonfinite'] != 'skip')}")

    def check_validation(self, row, progress):
        """Halt when the epoch's validation loss (or the EMA's) in ``row`` is not finite: its model outputs NaN or
        infinity, so neither `last` nor `best` is written from it. The same on every rank (the evaluation is
        reduced over the ranks)."""
        bad = [f"{name} {row[key]:.4g}" for key, name in (("eval_loss", "validation loss"),
                                                         ("ema_eval_loss", "EMA validation loss"))
               if key in row and not math.isfinite(row[key])]
        if bad:
            raise NonFiniteHalt(f"{' and '.join(bad)} after epoch {progress.epoch} update {progress.updates}: last "
                                f"and best not written; {self.checkpoints.last_good_text(validated=True)}; "
                                f"{nonfinite_fix(self.train_cfg, skip_helps=False)}")
