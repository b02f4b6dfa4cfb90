"""bench/profile.py: the eager forward by module kind through forward hooks, leaving the model as it was."""
import sys

import oneflow as flow
import pytest

from oneflow_posmlp.bench.profile import KINDS, PHASES, Timeline, kind_of, profile_forward, profile_train_step
from oneflow_posmlp.models import build_model
from oneflow_posmlp.models.hooks import forward_hooks

TINY = {"img_size": 32, "embed_dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "win_size": [4, 4, 2, 1],
        "gamma": [2, 4, 8, 16], "num_classes": 5}
MODEL_MODULES = [name for name in sys.modules if name.startswith("oneflow_posmlp.models")]


MODEL_CACHES = ("_features_t_cache", "_map_cache")  # made by the model's own forward (GQPE features, eval maps)


def snapshot(model):
    """Everything a patching profiler could change: each module's attributes and hooks (by identity), the
    module globals of the model code and the attributes of its classes. The caches a forward fills in by itself
    (:data:`MODEL_CACHES`) are not the profiler's doing and are left out."""
    modules = {name: ({k: id(v) for k, v in vars(m).items() if k not in MODEL_CACHES},
                      list(m._forward_pre_hooks.items()), list(m._forward_hooks.items()), m.training)
               for name, m in model.named_modules()}
    code = {name: {k: id(v) for k, v in vars(sys.modules[name]).items()} for name in MODEL_MODULES}
    classes = {cls: {k: id(v) for k, v in vars(cls).items()} for m in model.modules() for cls in type(m).__mro__}
    return modules, code, classes


@pytest.mark.parametrize("shift", [False, True])
def test_profile_times_every_kind_and_leaves_the_model_as_it_was(shift):
    model = build_model(dict(TINY, shift=shift))
    calls = []
    model.levels[0].register_forward_hook(lambda m, i, o: calls.append("mine"))  # a user's hook must survive
    model.train()
    before = snapshot(model)
    x = flow.randn(2, 3, 32, 32)
    prof = profile_forward(model, x, repeat=1)
    assert snapshot(model) == before  # no attribute, global or class member replaced; hooks and mode restored
    for kind in ("LayerNorm", "Linear", "Conv2d", "GELU", "BatchNorm2d", "token mixing (group_mix bmm, permutes)",
                 "positional maps (GQPE/LRPE map, mask, bias)", "PoSGU rest (chunk, u*v)",
                 "block rest (residual, shifts)", "window partition/reverse (level permutes)", "other"):
        assert kind in prof["by_kind_ms"] and prof["by_kind_ms"][kind] >= 0, kind
    assert prof["forward_ms"] > 0 and prof["hooked_forward_ms"] > 0 and prof["batch_size"] == 2
    assert sum(prof["by_kind_ms"].values()) == pytest.approx(prof["hooked_forward_ms"], rel=1e-6)
    calls.clear()
    with flow.no_grad():
        model.eval()
        model(x)
    assert calls == ["mine"]


def test_every_module_kind_of_the_model_is_timed_or_known():
    """The kinds cover the model's compute modules; containers and parameter-free glue are left to their parent."""
    model = build_model(dict(TINY, gate_unit="sgu", shift=True))
    untimed = {type(m).__name__ for m in model.modules() if kind_of(m) is None}
    assert untimed <= {"PosMLP", "ConvPatchEmbed", "ConvPatchMerging", "Sequential", "Identity", "ModuleList"}, untimed
    assert "SGU (dense mixing, gate)" in profile_forward(model, flow.randn(1, 3, 32, 32), repeat=1)["by_kind_ms"]
    assert len({name for _, name in KINDS}) == len(KINDS)


def test_forward_hooks_restore_the_hooks_after_an_error():
    model = build_model(TINY)
    model.head.register_forward_pre_hook(lambda m, i: None)
    before = [(list(m._forward_pre_hooks.items()), list(m._forward_hooks.items())) for m in model.modules()]

    def boom(m, inputs):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with forward_hooks([(model.head, boom, None)]), flow.no_grad():
            model(flow.zeros(1, 3, 32, 32))
    assert [(list(m._forward_pre_hooks.items()), list(m._forward_hooks.items())) for m in model.modules()] == before


def _eager_updater(model):
    """The trainer's update routine over an eager step of ``model`` (its drop paths), and one update's
    micro-batches ``[(x, y)]``."""
    from oneflow_posmlp.config import load_config
    from oneflow_posmlp.engine.step import build_training
    from oneflow_posmlp.engine.update import Updater
    from oneflow_posmlp.models.drop import drop_path_modules
    from oneflow_posmlp.parallel import ParallelContext

    cfg = load_config(None, ["train.batch_size=2", "train.clip_grad=1.0", "dist.device=cpu"])
    ctx = ParallelContext(cfg["dist"])
    training = build_training(cfg, model, flow.nn.CrossEntropyLoss(), ctx, updates_per_epoch=1)
    updater = Updater(training.step, training.scheduler, ctx, 0, drop_path_modules(model), model)
    return updater, [(flow.randn(2, 3, 32, 32), flow.tensor([1, 3]))]


@pytest.mark.parametrize("clock", ["wall", "cpu"])
def test_train_step_profile_times_forward_backward_and_phases(clock):
    model = build_model(dict(TINY, drop_path_rate=0.1))
    before = snapshot(model)
    updater, batches = _eager_updater(model)
    w0 = model.head.weight.numpy().copy()
    prof = profile_train_step(updater, batches, repeat=1, clock=clock)
    assert snapshot(model) == before  # hooks restored, nothing replaced
    assert not (model.head.weight.numpy() == w0).all()  # the optimizer stepped, as in training
    kinds = prof["by_kind_ms"]
    for kind in ("Linear", "GELU", "LayerNorm", "Conv2d", "token mixing (group_mix bmm, permutes)", "drop path",
                 "PoSGU rest (chunk, u*v)", "loss"):
        assert kinds[kind]["forward"] > 0 and kinds[kind]["backward"] > 0, kind
    assert list(prof["phases_ms"]) == list(PHASES) and all(v > 0 for v in prof["phases_ms"].values())
    total = prof["forward_ms"] + prof["backward_ms"] + sum(prof["phases_ms"].values())
    assert total <= prof["hooked_step_ms"] * 1.0001 and total >= 0.5 * prof["hooked_step_ms"]
    assert prof["allreduce_ms"] is None and prof["batch_size"] == 2 and prof["clock"] == clock


def test_train_step_profile_runs_the_update_routine_and_its_step_object():
    """The profile times the trainer's own code: every update goes through ``Updater.update`` and the step
    object's ``run`` (no copy of its sequence), whose phases it marks through ``step.phases`` and gives back."""
    from oneflow_posmlp.engine.step import RUN_PHASES, no_phase
    from oneflow_posmlp.bench.profile import _Phases

    model = build_model(dict(TINY, drop_path_rate=0.1))
    updater, batches = _eager_updater(model)
    step, runs, phases = updater.step, [], []
    real_run = step.run

    def run(x, y, keep, seed_step, agree=None):
        runs.append(seed_step)
        assert keep is not None and keep.shape == (2, len(updater.drop_paths))  # the updater's masks
        marker = step.phases

        def spy(name):
            phases.append(name)
            return marker(name)

        step.phases = spy
        try:
            return real_run(x, y, keep, seed_step, agree)
        finally:
            step.phases = marker

    step.run = run
    lr0 = updater.lr
    prof = profile_train_step(updater, batches, repeat=2)
    # one unhooked warm-up, 2 unhooked, one hooked warm-up, 2 hooked: 6 updates of one micro-batch, seeded in turn
    assert runs == [(0, u, 0) for u in range(6)]
    assert phases == list(RUN_PHASES) * 6 and set(_Phases.KEYS) == set(RUN_PHASES)
    assert updater.lr != lr0  # the schedule moved after every applied update, as in training
    assert step.phases is no_phase
    assert prof["phases_ms"][PHASES[2]] > 0  # the update's host read is marked


def test_timeline_gives_each_interval_to_the_innermost_open_region():
    ticks = iter([0.0, 1.0, 3.0, 6.0, 10.0, 15.0])
    tl = Timeline(clock=lambda: next(ticks))
    a, b = object(), object()
    tl.push(a, "a")   # t=0
    tl.push(b, "b")   # t=1: a gets 1
    tl.pop(a)         # t=3: b (innermost) gets 2; a closes out of order
    tl.pop(a)         # closed already: nothing happens, no clock read
    tl.push(a, "a")   # t=6: b gets 3
    tl.pop(b)         # t=10: a gets 4
    tl.close_all()    # t=15: a gets 5
    assert dict(tl.totals) == {"a": 10.0, "b": 5.0}
