"""Host reads per update of the step objects (engine/step.py), counted: one per update, none per micro-batch,
eager and graph, with the eager loss scaler (AMP's) on; the scaler's finite check over many parameters is one
read. And the trainer's update boundary: the step's values and the stop agreement in one read."""
import numpy as np
import oneflow as flow
import pytest

from oneflow_posmlp.bench.host_reads import HostReads
from oneflow_posmlp.config import load_config
from oneflow_posmlp.engine.loss_scaler import DynamicLossScaler
from oneflow_posmlp.engine.step import EagerStep, build_training
from oneflow_posmlp.engine.stop import StopControl, StopSignals, TimeBudget
from oneflow_posmlp.models import build_model
from oneflow_posmlp.parallel import ParallelContext
from conftest import TINY_MODEL_CFG


def _setup(graph, accum):
    cfg = load_config("configs/demo.yaml")
    cfg["model"] = dict(TINY_MODEL_CFG, img_size=32, win_size=[4, 4, 2, 1], gamma=[2, 4, 8, 8])
    cfg["train"].update(graph=graph, grad_accum_steps=accum, batch_size=4 * accum, clip_grad=1.0)
    flow.manual_seed(0)
    model = build_model(cfg["model"])
    ctx = ParallelContext(cfg["dist"])
    ctx.apply(model)
    training = build_training(cfg, model, flow.nn.CrossEntropyLoss(), ctx, updates_per_epoch=10)
    rng = np.random.default_rng(0)
    batches = [(flow.tensor(rng.standard_normal((4, 3, 32, 32)).astype(np.float32)),
                flow.tensor(rng.integers(0, 5, 4))) for _ in range(accum)]
    return training, ctx, batches


def _reads_per_update(step, batches, updates=2, agree=None):
    counts, results = [], []
    for u in range(updates):
        with HostReads() as reads:
            for i, (x, y) in enumerate(batches):
                result = step.run(x, y, None, (0, u, i), agree=agree)
                if i < len(batches) - 1:
                    assert result is None and reads.count == 0  # nothing read per micro-batch
        counts.append(reads.count)
        results.append(result)
    return counts, results


@pytest.mark.parametrize("graph", [False, pytest.param(True, marks=pytest.mark.isolated)], ids=["eager", "graph"])
def test_one_host_read_per_update(graph):
    training, ctx, batches = _setup(graph, accum=1 if graph else 2)
    counts, results = _reads_per_update(training.step, batches, updates=3)
    assert counts == [1, 1, 1], counts
    assert all(r.finite and np.isfinite(r.loss) and r.micro_batches == len(batches) for r in results)
    if not graph:
        assert all(np.isfinite(r.grad_norm) for r in results)


def test_eager_amp_scaler_in_the_same_read():
    training, ctx, batches = _setup(False, accum=2)
    model = training.step.model
    step = EagerStep(model, flow.nn.CrossEntropyLoss(), training.optimizer, ctx, accum=2, clip_grad=1.0, amp=True)
    counts, results = _reads_per_update(step, batches, updates=2)
    assert counts == [1, 1] and step.scaler.good_steps == 2 and all(r.finite for r in results)


def test_eager_loss_is_the_mean_of_its_micro_batches():
    """The device sum reads as the old per-micro-batch host sum did."""
    training, ctx, batches = _setup(False, accum=2)
    _, (result,) = _reads_per_update(training.step, batches, updates=1)
    assert result.loss == pytest.approx(result.loss_sum / 2) and result.micro_batches == 2


def test_the_boundary_agreement_reads_once_with_the_values():
    training, ctx, batches = _setup(False, accum=1)
    stop = StopControl(StopSignals([]), TimeBudget(0, 0.0), ctx)
    decisions = []

    def agree(values):
        decisions.append(stop.decide(values=values))
        return decisions[-1].values

    counts, results = _reads_per_update(training.step, batches, updates=2, agree=agree)
    assert counts == [1, 1] and len(decisions) == 2
    assert decisions[-1].values[0] == results[-1].loss_sum and decisions[-1].stop is None


def test_loss_scaler_check_is_one_read_for_many_parameters():
    params = [flow.nn.Parameter(flow.ones(3)) for _ in range(200)]
    for p in params:
        p.grad = flow.full((3,), 4.0)
    scaler = DynamicLossScaler(init_scale=2.0)
    with HostReads() as reads:
        assert scaler.unscale_and_check(params)
    assert reads.count == 1
    params[123].grad = flow.tensor([1.0, float("inf"), 0.0])
    with HostReads() as reads:
        assert not scaler.unscale_and_check(params)
    assert reads.count == 1 and scaler.scale == 1.0
