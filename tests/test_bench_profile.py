"""bench/profile.py: the eager forward by module kind through forward hooks, leaving the model as it was."""
import sys

import oneflow as flow
import pytest

from oneflow_posmlp.bench.profile import KINDS, kind_of, profile_forward
from oneflow_posmlp.models import build_model
from oneflow_posmlp.models.hooks import forward_hooks

TINY = {"img_size": 32, "embed_dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "win_size": [4, 4, 2, 1],
        "gamma": [2, 4, 8, 16], "num_classes": 5}
MODEL_MODULES = [name for name in sys.modules if name.startswith("oneflow_posmlp.models")]


def snapshot(model):
    """Everything a patching profiler could change: each module's attributes and hooks (by identity), the
    module globals of the model code and the attributes of its classes."""
    modules = {name: ({k: id(v) for k, v in vars(m).items()}, list(m._forward_pre_hooks.items()),
                      list(m._forward_hooks.items()), m.training) for name, m in model.named_modules()}
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
    for kind in ("LayerNorm", "Linear", "Conv2d", "GELU", "BatchNorm2d", "token mixing (group_mix bmm)",
                 "positional maps (GQPE/LRPE map, mask, bias)", "PoSGU rest (chunk, u*v)",
                 "block rest (residual, drop path, shifts)", "window partition/reverse (level permutes)", "other"):
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
    assert untimed <= {"PosMLP", "ConvPatchEmbed", "ConvPatchMerging", "Sequential", "Identity", "Dropout",
                       "DropPath", "ModuleList"}, untimed
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
