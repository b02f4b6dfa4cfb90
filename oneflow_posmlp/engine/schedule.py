"""The learning-rate schedule: linear warm-up from ``train.warmup_lr``, then cosine to ``train.min_lr``.

``train.schedule_unit`` says when the lr moves:

- ``epoch`` (the official runs): timm's ``CosineLRScheduler`` with ``t_in_epochs=True``, stepped once per
  epoch (the official ``main.py`` calls ``lr_scheduler.step(epoch + 1)`` after each epoch), so epoch ``e``
  runs all its updates at the value for ``t = e``: the first epoch at ``warmup_lr``, warm-up ending at epoch
  ``warmup_epochs`` and the cosine counting from epoch 0 (timm without ``warmup_prefix``). The per-epoch
  values come from flowvision's ``CosineLRScheduler`` (timm's); :class:`EpochStaircase` holds each one for
  the epoch's updates, eagerly and inside an ``nn.Graph`` (as a ``piecewise_scaling_conf``), so eager and
  graph runs share one exact schedule and ``train.scheduler`` does not apply.
- ``update``: the same curve sampled at every update (``t`` = update / updates per epoch), by one of two
  implementations chosen by ``train.scheduler``:

  - ``timm``: flowvision's ``CosineLRScheduler`` (timm's) with ``t_in_epochs=False``: warm-up ramps to the
    base lr, then ``min_lr + (lr - min_lr) * (1 + cos(pi * t / T)) / 2`` at update ``t`` of ``T``;
  - ``oneflow``: OneFlow's ``WarmupLR(CosineDecayLR)``, which an ``nn.Graph`` runs inside the graph. The same
    cosine; the warm-up ramps to the cosine's value at its last update instead of to the base lr (lower by
    ``1 - (1 + cos(pi * W / T)) / 2``: 0.27% for 10 of 300 epochs), so there is no step at its end.

  ``auto`` picks ``oneflow`` for graph training and ``timm`` for eager training; setting ``oneflow`` on an
  eager run reproduces a graph run step by step (debugging).

Every schedule has ``step_update(num_updates)`` (set the lr of update ``num_updates``, counted from 0) and
``native`` (the OneFlow ``LRScheduler`` a graph runs, or ``None``).
"""
import contextlib
import logging

import oneflow as flow
from flowvision.scheduler import CosineLRScheduler
from oneflow.nn.optimizer.lr_scheduler import LRScheduler

# flowvision's (timm's) CosineLRScheduler warns through its module's logger whenever t_initial is 1, i.e. for every
# one-epoch run stepped per epoch and every one-update run: "Cosine annealing scheduler will have no effect on
# the learning rate since t_initial = t_mul = eta_mul = 1." It tells the user nothing (the one epoch runs at
# the one value the schedule has, as asked), so it is dropped where our schedules are built; the logger's other
# messages pass.
NO_EFFECT_NOTICE = "Cosine annealing scheduler will have no effect on the learning rate"


class _DropNoEffectNotice(logging.Filter):
    def filter(self, record):
        return not str(record.msg).startswith(NO_EFFECT_NOTICE)


@contextlib.contextmanager
def _without_no_effect_notice():
    """While building a flowvision ``CosineLRScheduler``: its t_initial = 1 notice dropped, nothing else."""
    logger, drop = logging.getLogger(CosineLRScheduler.__module__), _DropNoEffectNotice()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def cosine_lr_scheduler(optimizer, **kwargs):
    """flowvision's ``CosineLRScheduler(optimizer, **kwargs)``, without its t_initial = 1 notice."""
    with _without_no_effect_notice():
        return CosineLRScheduler(optimizer, **kwargs)


class OneFlowCosine:
    """``WarmupLR(CosineDecayLR)`` with the ``step_update(num_updates)`` interface of flowvision's schedulers."""

    def __init__(self, optimizer, total, warmup, lr, warmup_lr, min_lr):
        cosine = flow.optim.lr_scheduler.CosineDecayLR(optimizer, decay_steps=total, alpha=min_lr / lr)
        if warmup > 0:
            self.native = flow.optim.lr_scheduler.WarmupLR(cosine, warmup_factor=warmup_lr / lr, warmup_iters=warmup,
                                                           warmup_method="linear")
        else:
            self.native = cosine
        self.updates = 0

    def step_update(self, num_updates):
        """Set the optimizer's lr to the schedule's value at ``num_updates`` (an update count, not a delta)."""
        while self.updates < num_updates:
            self.native.step()
            self.updates += 1
        if num_updates < self.updates:
            raise ValueError(f"the schedule is at update {self.updates}; it cannot go back to {num_updates}")

    def state_dict(self):
        return {"updates": self.updates}


class EpochStaircase(LRScheduler):
    """A per-epoch lr held for every update of the epoch: update ``u`` runs at ``epoch_lrs[u // updates_per_epoch]``
    (the last value past the end). ``epoch_lrs`` are absolute rates; each parameter group gets its base lr
    times ``epoch_lr / lr``. An ``nn.Graph`` runs it as OneFlow's ``piecewise_scaling_conf`` (scale ``i`` for
    graph train steps ``<= boundaries[i]``), so graph and eager runs use the same values."""

    def __init__(self, optimizer, epoch_lrs, updates_per_epoch, lr):
        if updates_per_epoch < 1 or not epoch_lrs:
            raise ValueError(f"a staircase needs >= 1 update per epoch and >= 1 epoch, got {updates_per_epoch}, "
                             f"{len(epoch_lrs)}")
        self.epoch_lrs = [float(v) for v in epoch_lrs]
        self.updates_per_epoch = int(updates_per_epoch)
        self.scales = [v / lr for v in self.epoch_lrs]
        self.updates = 0
        super().__init__(optimizer)  # sets the lr of update 0 (last_step 0)
        self.native = self

    def epoch_of(self, update):
        return min(update // self.updates_per_epoch, len(self.scales) - 1)

    def get_lr(self, base_lr, step):
        return base_lr * self.scales[self.epoch_of(step)]

    def step_update(self, num_updates):
        """Set the optimizer's lr to the value of update ``num_updates`` (an update count, not a delta)."""
        if num_updates < self.updates:
            raise ValueError(f"the schedule is at update {self.updates}; it cannot go back to {num_updates}")
        self.updates = num_updates
        self.last_step = num_updates
        self.update_lrs([self.get_lr(base_lr, num_updates) for base_lr in self.base_lrs])

    def state_dict(self):
        return {"updates": self.updates}

    def _generate_conf_for_graph(self, lr_conf):
        lr_conf.piecewise_scaling_conf.SetInParent()
        conf = lr_conf.piecewise_scaling_conf
        conf.boundaries.extend([(e + 1) * self.updates_per_epoch - 1 for e in range(len(self.scales) - 1)])
        conf.scales.extend(self.scales)


def timm_epoch_lrs(train_cfg, lr):
    """The official per-epoch rates: timm's ``CosineLRScheduler(t_initial=epochs, warmup_t=warmup_epochs,
    t_in_epochs=True)`` (flowvision's copy) at epochs ``0 .. epochs - 1``."""
    probe = flow.optim.SGD([flow.nn.Parameter(flow.zeros(1))], lr=lr)  # the timm scheduler writes to its optimizer
    timm = cosine_lr_scheduler(probe, t_initial=train_cfg["epochs"], lr_min=train_cfg["min_lr"],
                               warmup_t=train_cfg["warmup_epochs"], warmup_lr_init=train_cfg["warmup_lr"],
                               t_in_epochs=True, cycle_limit=1)
    return [timm.get_epoch_values(e)[0] for e in range(train_cfg["epochs"])]


def resolve_scheduler_kind(train_cfg):
    """``epoch`` (the staircase), or for per-update schedules ``timm`` / ``oneflow``."""
    if train_cfg.get("schedule_unit", "update") == "epoch":
        return "epoch"
    kind = train_cfg["scheduler"]
    if kind == "auto":
        return "oneflow" if train_cfg["graph"] else "timm"
    return kind


def build_scheduler(optimizer, train_cfg, lr, updates_per_epoch):
    """The schedule of ``train_cfg`` (``train:`` section) over ``epochs * updates_per_epoch`` updates."""
    kind = resolve_scheduler_kind(train_cfg)
    if kind == "epoch":
        return EpochStaircase(optimizer, timm_epoch_lrs(train_cfg, lr), max(int(updates_per_epoch), 1), lr)
    total = int(round(train_cfg["epochs"] * updates_per_epoch))
    warmup = int(round(train_cfg["warmup_epochs"] * updates_per_epoch))
    if kind == "oneflow":
        return OneFlowCosine(optimizer, total, warmup, lr, train_cfg["warmup_lr"], train_cfg["min_lr"])
    timm = cosine_lr_scheduler(optimizer, t_initial=total, lr_min=train_cfg["min_lr"], warmup_t=warmup,
                               warmup_lr_init=train_cfg["warmup_lr"], t_in_epochs=False, cycle_limit=1)
    timm.native = None
    return timm
