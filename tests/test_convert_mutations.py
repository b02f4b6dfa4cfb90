"""Conversion mistakes that the checks must catch, on the trained-like reference models (PROVENANCE.md).

Each mistake a converter can make (the group order of GQPE centres or of LRPE tables, a projection's channel
order, a spread's scale, the token bias's sign, the BatchNorm statistics) is applied to a state dict converted
by ``convert_torch_to_oneflow``, in one layer only (``LAYER``: the least sensitive of the 5, measured), and must
make both ``verify`` (``--verify``) and the equivalence check of tests/test_models_equivalence.py fail; the
unmutated converted state dict passes both. Here they move the eval logits by 9.5e-3 (a spread) to 0.66 (LRPE
tables); on the tiny reference models the same centre swap moves them by 1.3e-6, within any tolerance
(measured, with the command: docs/convert.md, "What it catches").
"""
import numpy as np
import oneflow as flow
import pytest

from conftest import TRAINED_LIKE_MODELS, reference_file
from reference_models import compare, reference
from oneflow_posmlp.checkpoint import load_weights
from oneflow_posmlp.conversion import VerificationError, convert_torch_to_oneflow, verify
from oneflow_posmlp.models import build_model
from oneflow_posmlp.models.token_mixing import group_major_order

LAYER = "levels.2.encoder.0"  # level 2's first block: the smallest effect of every mistake but the token bias's


def swap_groups(a, axis):
    """Groups 0 and 1 exchanged along ``axis`` (which group is which, read in the wrong order)."""
    order = np.arange(a.shape[axis])
    order[[0, 1]] = [1, 0]
    return np.take(a, order, axis=axis)


def centres_swapped(state):
    k = f"{LAYER}.gate_unit.pos.attention_centers"  # (gamma, 2)
    return {k: swap_groups(state[k], 0)}


def tables_swapped(state):
    k = f"{LAYER}.gate_unit.pos.window_relative_position_bias_table"  # ((2w-1)^2, gamma)
    return {k: swap_groups(state[k], 1)}


def spread_scaled(state):
    k = f"{LAYER}.gate_unit.pos.attention_spreads"
    return {k: state[k] * 1.5}


def token_bias_negated(state):
    k = f"{LAYER}.gate_unit.pos.token_proj_n_bias"
    return {k: -state[k]}


def projection_group_major(state):
    """``proj_c_e``'s output channels written in the group-major order ``(s v)`` instead of the official
    ``(v s)`` (each half of the hidden width), its consumer ``proj_c_s`` left as it was."""
    w, b = f"{LAYER}.proj_c_e.weight", f"{LAYER}.proj_c_e.bias"
    pos = f"{LAYER}.gate_unit.pos."
    gamma = (state[pos + "attention_centers"].shape[0] if pos + "attention_centers" in state
             else state[pos + "window_relative_position_bias_table"].shape[1])
    half = state[w].shape[0] // 2
    order = np.concatenate([group_major_order(half, gamma), half + group_major_order(half, gamma)])
    return {w: state[w][order], b: state[b][order]}


def batchnorm_stats_not_copied(state):
    """Running statistics left at a fresh BatchNorm's (mean 0, var 1), e.g. buffers skipped."""
    out = {k: np.zeros_like(v) for k, v in state.items() if k.endswith("running_mean")}
    out.update({k: np.ones_like(v) for k, v in state.items() if k.endswith("running_var")})
    return out


def batchnorm_mean_and_var_exchanged(state):
    return {k: state[k.replace("running_mean", "running_var") if k.endswith("running_mean") else
                     k.replace("running_var", "running_mean")]
            for k in state if k.endswith(("running_mean", "running_var"))}


COMMON = (token_bias_negated, projection_group_major, batchnorm_stats_not_copied, batchnorm_mean_and_var_exchanged)
MISTAKES = {"tl_gqpe": (centres_swapped, spread_scaled) + COMMON,
            "tl_lrpe": (tables_swapped,) + COMMON,
            "tl_lrpe_gated": (tables_swapped,) + COMMON}
CASES = [(name, mistake) for name in TRAINED_LIKE_MODELS for mistake in (None,) + MISTAKES[name]]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """``{name: (state dict as converted and written by the converter, reference vectors, model config)}``."""
    out = {}
    for name in TRAINED_LIKE_MODELS:
        dst = tmp_path_factory.mktemp(name) / "w.safetensors"
        convert_torch_to_oneflow(reference_file(name, "pth.tar"), dst, log=lambda *a, **k: None)
        arrays, meta = load_weights(dst)
        out[name] = arrays, reference(name)[1], meta["model"]
    return out


@pytest.mark.parametrize("name,mistake", CASES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_a_conversion_mistake_fails_verify_and_the_equivalence_check(converted, name, mistake):
    state, vectors, model_cfg = converted[name]
    state = dict(state)
    if mistake is not None:
        changed = mistake(state)
        assert changed and all(not np.array_equal(v, state[k]) for k, v in changed.items()), "the mistake changes it"
        state.update(changed)
    model = build_model(model_cfg)
    model.load_state_dict({k: flow.tensor(v) for k, v in state.items()}, strict=True)
    if mistake is None:
        assert all(c.ok for c in verify(model, reference_file(name, "npz")))
        assert compare(model, vectors) == {}
        return
    with pytest.raises(VerificationError, match="differs from the reference: logits_eval by "):
        verify(model, reference_file(name, "npz"))
    problems = compare(model, vectors)
    assert "logits_eval" in problems and "features_eval" in problems, problems
    if "batchnorm" not in mistake.__name__:  # running statistics matter in eval mode only
        assert "logits_train" in problems and "loss_train" in problems, problems
