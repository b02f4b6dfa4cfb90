"""engine/schedule.py. Per update: OneFlow's warm-up + cosine (the one a graph runs) against its formula and
against timm's (flowvision's) schedule, which it equals after the warm-up. Per epoch (the official runs): timm's
epoch values held for each epoch's updates, eagerly and inside an nn.Graph, also after a resume."""
import math

import oneflow as flow
import pytest

from oneflow_posmlp.engine.schedule import build_scheduler, resolve_scheduler_kind

LR, WARMUP_LR, MIN_LR, TOTAL, WARMUP = 1e-3, 1e-5, 1e-6, 30, 5
TRAIN = {"epochs": TOTAL, "warmup_epochs": WARMUP, "warmup_lr": WARMUP_LR, "min_lr": MIN_LR, "graph": False}


def cosine(t):
    return MIN_LR + (LR - MIN_LR) * 0.5 * (1 + math.cos(math.pi * t / TOTAL))


def lrs(kind, steps=TOTAL + 2):
    opt = flow.optim.AdamW([flow.nn.Parameter(flow.zeros(2))], lr=LR)
    sched = build_scheduler(opt, dict(TRAIN, scheduler=kind), LR, 1)  # 1 update per epoch
    out = []
    for t in range(steps):
        sched.step_update(t)
        out.append(opt.param_groups[0]["lr"])
    return out


def test_oneflow_schedule_follows_its_formula():
    got = lrs("oneflow")
    for t, lr in enumerate(got):
        want = WARMUP_LR + t * (cosine(WARMUP) - WARMUP_LR) / WARMUP if t < WARMUP else cosine(min(t, TOTAL))
        assert lr == pytest.approx(want, rel=1e-9, abs=1e-12), t


def test_oneflow_equals_timm_after_warmup_and_differs_during_it():
    ours, timm = lrs("oneflow"), lrs("timm")
    for t in range(WARMUP, TOTAL):
        assert ours[t] == pytest.approx(timm[t], rel=1e-9), t
    assert timm[WARMUP - 1] > ours[WARMUP - 1]  # timm ramps to the base lr, OneFlow to the cosine's value


def test_schedule_cannot_go_back_and_auto_picks_by_mode():
    opt = flow.optim.AdamW([flow.nn.Parameter(flow.zeros(2))], lr=LR)
    sched = build_scheduler(opt, dict(TRAIN, scheduler="oneflow"), LR, 1)
    sched.step_update(4)
    with pytest.raises(ValueError, match="cannot go back"):
        sched.step_update(2)
    assert resolve_scheduler_kind({"scheduler": "auto", "graph": True}) == "oneflow"
    assert resolve_scheduler_kind({"scheduler": "auto", "graph": False}) == "timm"


# ----------------------------------------------------------------------------- per epoch (the official runs)
EPOCHS, WARMUP_EPOCHS, PER_EPOCH = 6, 2, 3
EPOCH_TRAIN = {"epochs": EPOCHS, "warmup_epochs": WARMUP_EPOCHS, "warmup_lr": WARMUP_LR, "min_lr": MIN_LR,
               "graph": False, "scheduler": "auto", "schedule_unit": "epoch"}


def official_epoch_lr(e):
    """timm 0.4.5 CosineLRScheduler(t_in_epochs=True) at epoch e: linear warm-up to the base lr at
    ``warmup_epochs``, the cosine counting from epoch 0 (no warmup_prefix)."""
    if e < WARMUP_EPOCHS:
        return WARMUP_LR + e * (LR - WARMUP_LR) / WARMUP_EPOCHS
    return MIN_LR + (LR - MIN_LR) * 0.5 * (1 + math.cos(math.pi * e / EPOCHS))


def epoch_lrs(train=EPOCH_TRAIN, updates=EPOCHS * PER_EPOCH):
    opt = flow.optim.AdamW([flow.nn.Parameter(flow.zeros(2))], lr=LR)
    sched = build_scheduler(opt, train, LR, PER_EPOCH)
    out = []
    for u in range(updates):
        sched.step_update(u)
        out.append(opt.param_groups[0]["lr"])
    return out


def test_epoch_unit_holds_timms_epoch_value_for_every_update_of_the_epoch():
    got = epoch_lrs()
    for u, lr in enumerate(got):
        assert lr == pytest.approx(official_epoch_lr(u // PER_EPOCH), rel=1e-12), u
    assert got[0] == got[PER_EPOCH - 1] == WARMUP_LR  # the whole first epoch at warmup_lr
    # graph or eager, timm or oneflow: one schedule
    assert epoch_lrs(dict(EPOCH_TRAIN, graph=True)) == epoch_lrs(dict(EPOCH_TRAIN, scheduler="oneflow")) == got
    assert resolve_scheduler_kind(EPOCH_TRAIN) == "epoch"


def test_epoch_schedule_rebuilt_at_an_update_continues_it():
    """Resume: the trainer rebuilds the schedule from the config and moves it to the saved update."""
    opt = flow.optim.AdamW([flow.nn.Parameter(flow.zeros(2))], lr=LR)
    sched = build_scheduler(opt, EPOCH_TRAIN, LR, PER_EPOCH)
    sched.step_update(7)
    assert opt.param_groups[0]["lr"] == epoch_lrs()[7]
    with pytest.raises(ValueError, match="cannot go back"):
        sched.step_update(6)


class _Step(flow.nn.Graph):
    """One SGD step of ``w <- w - lr * 1`` (loss = w): the change of ``w`` is the lr the graph used."""

    def __init__(self, model, opt, sched):
        super().__init__()
        self.model = model
        self.add_optimizer(opt, lr_sch=sched.native)

    def build(self, x):
        loss = self.model(x).sum()
        loss.backward()
        return loss


def graph_lrs(start, updates):
    from oneflow_posmlp.engine.graph import TRAIN_STEP

    model = flow.nn.Linear(1, 1, bias=False)
    flow.nn.init.zeros_(model.weight)
    opt = flow.optim.SGD(model.parameters(), lr=LR)
    sched = build_scheduler(opt, EPOCH_TRAIN, LR, PER_EPOCH)
    graph = _Step(model, opt, sched)
    if start:  # a resumed graph: the train step comes from the checkpoint (load_graph_optimizer_state)
        graph.load_state_dict({TRAIN_STEP: flow.tensor([start], dtype=flow.int64)}, strict=False)
    out, before = [], 0.0
    for _ in range(updates):
        graph(flow.ones(1, 1))
        w = float(model.weight.numpy().ravel()[0])
        out.append(before - w)
        before = w
    return out


@pytest.mark.isolated
def test_graph_runs_the_epoch_staircase_and_resumes_it():
    want = epoch_lrs()
    # read as differences of a float32 weight near 1e-2: resolution ~1e-9; epochs differ by >= 6e-5
    assert graph_lrs(0, len(want)) == pytest.approx(want, rel=1e-6, abs=1e-9)
    assert graph_lrs(7, 5) == pytest.approx(want[7:12], rel=1e-6, abs=1e-9)


def test_official_configs_step_per_epoch_and_the_default_per_update():
    from oneflow_posmlp.config import load_config

    for name in ("posmlp_t", "posmlp_s", "posmlp_b"):
        assert load_config(f"configs/{name}.yaml")["train"]["schedule_unit"] == "epoch", name
    assert load_config()["train"]["schedule_unit"] == "update"
    assert load_config("configs/demo.yaml")["train"]["schedule_unit"] == "update"


def test_a_one_epoch_schedule_does_not_print_flowvisions_no_effect_notice(caplog):
    """flowvision's CosineLRScheduler warns "will have no effect ... t_initial = t_mul = eta_mul = 1" for every
    one-epoch (per-epoch) or one-update run; building our schedules drops that notice and nothing else."""
    import logging

    from flowvision.scheduler import CosineLRScheduler

    from oneflow_posmlp.engine.schedule import NO_EFFECT_NOTICE, _without_no_effect_notice

    opt = flow.optim.AdamW([flow.nn.Parameter(flow.zeros(2))], lr=LR)
    with caplog.at_level(logging.WARNING):
        CosineLRScheduler(opt, t_initial=1)  # flowvision itself: the notice is there to be dropped
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith(NO_EFFECT_NOTICE)], caplog.records
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        for unit, kind in (("epoch", "timm"), ("update", "timm"), ("update", "oneflow")):  # 1 epoch of 1 update
            build_scheduler(opt, dict(TRAIN, epochs=1, warmup_epochs=0, schedule_unit=unit, scheduler=kind), LR, 1)
        with _without_no_effect_notice():  # the same logger's other messages pass
            logging.getLogger(CosineLRScheduler.__module__).warning("another notice")
        logging.getLogger(CosineLRScheduler.__module__).warning(NO_EFFECT_NOTICE + " (outside: not ours to drop)")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["another notice", NO_EFFECT_NOTICE + " (outside: not ours to drop)"], messages
