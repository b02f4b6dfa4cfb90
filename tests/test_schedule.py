"""engine/schedule.py: OneFlow's warm-up + cosine (the one a graph runs) against its formula and against
timm's (flowvision's) schedule, which it equals after the warm-up."""
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
