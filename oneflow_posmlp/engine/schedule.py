"""The learning-rate schedule: linear warm-up from ``train.warmup_lr``, then cosine to ``train.min_lr``, per update.

Two implementations, chosen by ``train.scheduler``:

- ``timm``: flowvision's ``CosineLRScheduler`` (timm's, as the official runs): warm-up ramps to the base lr,
  then ``min_lr + (lr - min_lr) * (1 + cos(pi * t / T)) / 2`` at update ``t`` of ``T``;
- ``oneflow``: OneFlow's ``WarmupLR(CosineDecayLR)``, the only kind an ``nn.Graph`` can run inside the graph.
  The same cosine; the warm-up ramps to the cosine's value at its last update instead of to the base lr
  (lower by ``1 - (1 + cos(pi * W / T)) / 2``: 0.27% for 10 of 300 epochs), so there is no step at its end.

``auto`` picks ``oneflow`` for graph training and ``timm`` for eager training; setting ``oneflow`` on an eager
run reproduces a graph run step by step (debugging).
"""
import oneflow as flow
from flowvision.scheduler import CosineLRScheduler


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


def resolve_scheduler_kind(train_cfg):
    kind = train_cfg["scheduler"]
    if kind == "auto":
        return "oneflow" if train_cfg["graph"] else "timm"
    return kind


def build_scheduler(optimizer, train_cfg, lr, updates_per_epoch):
    """The schedule of ``train_cfg`` (``train:`` section) over ``epochs * updates_per_epoch`` updates."""
    total = int(round(train_cfg["epochs"] * updates_per_epoch))
    warmup = int(round(train_cfg["warmup_epochs"] * updates_per_epoch))
    if resolve_scheduler_kind(train_cfg) == "oneflow":
        return OneFlowCosine(optimizer, total, warmup, lr, train_cfg["warmup_lr"], train_cfg["min_lr"])
    return CosineLRScheduler(optimizer, t_initial=total, lr_min=train_cfg["min_lr"], warmup_t=warmup,
                             warmup_lr_init=train_cfg["warmup_lr"], t_in_epochs=False, cycle_limit=1)
