"""The update boundary: one agreement per update (made inside the step with its values, or made here), the
time budget's question, the corrupt-image counts at an epoch's end, and the stop line."""
import signal
import time
from types import SimpleNamespace

import oneflow as flow

from oneflow_posmlp.engine.boundary import UpdateBoundary
from oneflow_posmlp.engine.progress import Progress
from oneflow_posmlp.engine.step import StepResult
from oneflow_posmlp.engine.stop import StopControl, StopSignals, TimeBudget
from oneflow_posmlp.engine.validation import Validation

ONE = SimpleNamespace(distributed=False, world=1, rank=0, device="cpu")


def _boundary(minutes=0, skipped=0, ema=None, started=0.0):
    control = StopControl(StopSignals([signal.SIGUSR1]), TimeBudget(minutes, time.time() - started), ONE)
    validation = Validation({"eval_interval": 1, "epochs": 3}, val_loader=[0] * 4, ema=ema)
    return UpdateBoundary(control, validation, SimpleNamespace(skipped=skipped)), control


def test_the_steps_agreement_is_used_once_with_the_updates_finiteness():
    boundary, control = _boundary()
    ok = StepResult(1.0, 1.0, 1, 0.5, finite=True)
    assert boundary.agree(flow.tensor([2.0, 0.25], dtype=flow.float64), epoch=0, epoch_end=False) == (2.0, 0.25)
    control.signals.received = signal.SIGUSR1  # noted after the step's agreement: seen at the next one
    d = boundary.decide(StepResult(1.0, 1.0, 1, float("nan"), finite=False), 0, False)
    assert d.stop is None and d.nonfinite and d.values == (2.0, 0.25)
    d = boundary.decide(ok, 0, False)  # no agreement made by the step: one now
    assert d.stop == "SIGUSR1" and not d.nonfinite and d.values == ()


def test_an_epochs_end_sums_the_corrupt_images_and_asks_for_the_evaluation():
    boundary, _ = _boundary(skipped=3)
    assert boundary.decide(StepResult(1.0, 1.0, 1, 0.5), 0, epoch_end=True).counts == (3,)
    assert boundary.decide(StepResult(1.0, 1.0, 1, 0.5), 0, epoch_end=False).counts == ()
    assert boundary.validation.forward_batches(0) == 4
    assert _boundary(ema=object())[0].validation.forward_batches(0) == 8  # the EMA is evaluated too


def test_a_spent_budget_stops_and_the_line_says_where_and_how_to_go_on():
    boundary, control = _boundary(minutes=1, started=90.0)  # 30 s past the minute
    d = boundary.decide(StepResult(1.0, 1.0, 1, 0.5), 0, False)
    assert d.stop == "train.max_minutes"
    p = Progress(epoch=2, updates=9, batch_in_epoch=4)
    line = boundary.stop_message(d, p, "out/last", saved=1.25)
    assert line.startswith("stopped (train.max_minutes) at epoch 2 update 9 (batch 4): saved out/last in 1.2 s; ")
    assert " s past train.max_minutes; exit 75: continue with --resume auto" in line
    assert "(written at the end of the epoch)" in boundary.stop_message(d, p, "out/last", saved=None)
