"""The one update routine: what a micro-batch goes through between the loader and the step object, and what
follows an applied update. The trainer, the benchmark's runner (``bench/runner.py``) and its profile
(``bench/profile.py``) all call it, so what they time is what training runs.

A micro-batch ``(x, y)`` (local tensors on the device, ``(b, 3, H, W)`` and ``(b,)``) of update ``u`` at
position ``i`` in it is seeded from ``(train.seed, u, i)`` (``engine/randomness.py``): Mixup/CutMix on the local
batch (before ``to_global``), this rank's drop-path keep masks, then the step object's ``run``
(``engine/step.py``: forward, backward, and at the update's last micro-batch clipping and the optimizer step).
After an applied update the lr schedule moves to the next update and the EMA follows the model.
"""
from .randomness import numpy_seeded
from .step import micro_batch_keep


def mix(mixup, x, y, seed_step, data_rank):
    """Mixup/CutMix (``mixup``, or None: ``(x, y)`` unchanged) of a local micro-batch, NumPy seeded from the
    micro-batch's ``seed_step`` ``(seed, update, micro)`` and the data-parallel rank. ``y`` becomes soft targets
    ``(b, classes)``."""
    if mixup is None:
        return x, y
    with numpy_seeded(*seed_step, data_rank):
        return mixup(x, y)


class Updater:
    """The update routine of one built training (:func:`~oneflow_posmlp.engine.step.build_training`).

    ``step``: the step object (eager or graph); ``scheduler``: the lr schedule (``step_update(updates)``);
    ``drop_paths``: the model's drop-path modules (``models/drop.py``); ``mixup``: flowvision's Mixup/CutMix or
    None; ``ema``: the model EMA or None. Counters are the caller's (:class:`~oneflow_posmlp.engine.progress.Progress`
    in the trainer): every call names its update."""

    def __init__(self, step, scheduler, ctx, seed, drop_paths, model, mixup=None, ema=None):
        self.step, self.scheduler, self.ctx, self.seed = step, scheduler, ctx, seed
        self.drop_paths, self.model, self.mixup, self.ema = drop_paths, model, mixup, ema

    @property
    def lr(self):
        """The learning rate the next update runs at."""
        return self.step.optimizer.param_groups[0]["lr"]

    def seed_step(self, update, micro):
        """``(seed, update, micro)``: what seeds every draw of a micro-batch."""
        return (self.seed, update, micro)

    def mix(self, x, y, update, micro):
        """:func:`mix` with this run's Mixup/CutMix and seed."""
        return mix(self.mixup, x, y, self.seed_step(update, micro), self.ctx.data_rank)

    def micro_batch(self, x, y, update, micro, agree=None, mixed=False):
        """Run micro-batch ``micro`` of update ``update`` (``mixed``: Mixup already applied by the caller, with
        :meth:`mix`). Returns None until the update's last micro-batch, then the step's
        :class:`~oneflow_posmlp.engine.step.StepResult` (``agree``: the step object's one host read, see
        ``engine/step.py``). The caller calls :meth:`after_update` for an applied (``finite``) result."""
        if not mixed:
            x, y = self.mix(x, y, update, micro)
        seed_step = self.seed_step(update, micro)
        keep = micro_batch_keep(self.drop_paths, len(x), self.ctx, seed_step)
        return self.step.run(x, y, keep, seed_step, agree)

    def after_update(self, updates):
        """After an applied update (``updates``: the count before it): the lr schedule moves to the next update and
        the EMA follows the model. Returns the new count."""
        updates += 1
        self.scheduler.step_update(updates)
        if self.ema is not None:
            self.ema.update(self.model)
        return updates

    def update(self, micro_batches, updates, mixed=False):
        """One whole update over ``micro_batches`` ``[(x, y), ...]`` (``train.grad_accum_steps`` of them), the
        schedule and EMA moved when it was applied. Returns ``(result, updates after it)``."""
        result = None
        for micro, (x, y) in enumerate(micro_batches):
            result = self.micro_batch(x, y, updates, micro, mixed=mixed)
        if result is not None and result.finite:
            updates = self.after_update(updates)
        return result, updates
