"""The official PyTorch reference models (tests/fixtures/reference, PROVENANCE.md) and the check of a OneFlow model
against what they hold: eval logits and features, train logits, loss, the input gradient and every parameter
gradient. Used by tests/test_models_equivalence.py and tests/test_convert_mutations.py.

Tolerances (fp32, CPU), each scaled by its own reference tensor; measured errors (all six models, see
docs/model.md) in brackets:
- logits (eval, train) and features: ``max|ours - ref| <= OUT_RTOL * max|ref| + OUT_ATOL``
  [at most 8.7e-6 * max|ref|];
- loss: ``|ours - ref| <= LOSS_ATOL`` [2.0e-6];
- every gradient (the input's and each parameter's) that is non-zero in exact arithmetic, three ways, so that
  a port gradient of zero (or of the wrong direction) fails however small the reference is:
  ``||ours - ref|| <= GRAD_RTOL * ||ref||`` [2.9e-5], ``max|ours - ref| <= GRAD_ELEM_RTOL * max|ref||``
  [3.4e-5], and cosine similarity ``>= GRAD_MIN_COSINE`` [1 - 4.3e-10]; a reference gradient that is zero
  fails (nothing to compare against). The smallest such reference gradient is tiny_gqpe's level-0 GQPE
  centres, norm 5.6e-6.
- gradients that are zero in exact arithmetic (:func:`zero_in_exact_arithmetic`: a conv bias followed by a
  train-mode BatchNorm, whose mean subtraction removes it): both frameworks give float noise, so
  ``max|ours|`` and ``max|ref|`` must both be ``<= ZERO_GRAD_ATOL`` [4.7e-6 and 1.8e-6].
"""
import json

import numpy as np
import oneflow as flow
import oneflow.nn as nn

from conftest import reference_file
from oneflow_posmlp.checkpoint import extract_state_dict, load_torch_checkpoint
from oneflow_posmlp.cpu_kernels import apply_cpu_kernels
from oneflow_posmlp.models import build_model
from oneflow_posmlp.models.patch_embed import ConvPatchEmbed, ConvPatchMerging

OUT_RTOL, OUT_ATOL = 5e-5, 1e-6
LOSS_ATOL = 1e-5
GRAD_RTOL = 1e-4
GRAD_ELEM_RTOL = 1e-4
GRAD_MIN_COSINE = 1 - 1e-6
ZERO_GRAD_ATOL = 1e-5


def reference(name):
    """``(meta, vectors, state)``: the JSON, the npz and the checkpoint's state dict of reference model ``name``."""
    meta = json.loads(reference_file(name, "json").read_text())
    vectors = np.load(reference_file(name, "npz"))
    state = extract_state_dict(load_torch_checkpoint(reference_file(name, "pth.tar")))
    return meta, vectors, state


def build_reference_model(name, state=None, cpu_kernels=False):
    """The OneFlow model of reference ``name`` holding ``state`` (default: the reference's weights), strictly; with
    ``cpu_kernels`` in the forms a CPU run takes (``oneflow_posmlp.cpu_kernels``), else the official ones."""
    meta, vectors, ref_state = reference(name)
    model = build_model(meta["config"]["model"])
    model.load_state_dict({k: flow.tensor(np.array(v)) for k, v in (state or ref_state).items()}, strict=True)
    apply_cpu_kernels(model, cpu_kernels)
    return model, vectors


def eval_outputs(model, vectors):
    model.eval()
    with flow.no_grad():
        feats = model.forward_features(flow.tensor(vectors["input"]))
        logits = model.forward_head(feats)
    return logits.numpy(), feats.numpy()


def zero_in_exact_arithmetic(model):
    """Names of the parameters whose gradient is zero in exact arithmetic: the bias of a conv whose output goes
    straight into a BatchNorm in train mode (the stem with ``stem_norm="BN"``, downsampling with BN)."""
    names = set()
    for prefix, module in model.named_modules():
        if isinstance(module, ConvPatchEmbed) and module.stem_norm == "BN":
            names.update(f"{prefix}.projs.{i}.bias" for i, proj in enumerate(module.projs) if proj.bias is not None)
        elif isinstance(module, ConvPatchMerging) and isinstance(module.norm, nn.BatchNorm2d):
            names.add(f"{prefix}.conv.bias")
    return names


def output_problem(ours, ref):
    """Why ``ours`` (logits or features) is not ``ref``, or None."""
    diff, scale = float(np.abs(ours - ref).max()), float(np.abs(ref).max())
    allowed = OUT_RTOL * scale + OUT_ATOL
    return None if diff <= allowed else f"max|ours - ref| {diff:.3e} > {allowed:.3e} ({OUT_RTOL:g} x max|ref| " \
                                         f"{scale:.3g} + {OUT_ATOL:g})"


def gradient_problem(ours, ref, zero=False):
    """Why gradient ``ours`` is not ``ref``, or None (see the module docstring)."""
    ours, ref = ours.astype(np.float64), ref.astype(np.float64)
    if zero:
        worst = max(float(np.abs(ours).max()), float(np.abs(ref).max()))
        return None if worst <= ZERO_GRAD_ATOL else (
            f"zero in exact arithmetic, but max|ours| {np.abs(ours).max():.3e}, max|ref| {np.abs(ref).max():.3e} "
            f"(allowed {ZERO_GRAD_ATOL:g})")
    ref_norm, ours_norm = np.linalg.norm(ref), np.linalg.norm(ours)
    if not ref_norm > 0:
        return "the reference gradient is zero: nothing to compare against"
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.linalg.norm(ours - ref) / ref_norm
        elem = np.abs(ours - ref).max() / np.abs(ref).max()
        cosine = float(np.sum(ours * ref) / (ours_norm * ref_norm))
    problems = []
    if not rel <= GRAD_RTOL:
        problems.append(f"||ours - ref|| / ||ref|| {rel:.3e} > {GRAD_RTOL:g}")
    if not elem <= GRAD_ELEM_RTOL:
        problems.append(f"max|ours - ref| / max|ref| {elem:.3e} > {GRAD_ELEM_RTOL:g}")
    if not cosine >= GRAD_MIN_COSINE:
        problems.append(f"cosine {cosine:.9f} < {GRAD_MIN_COSINE:.9f} (||ours|| {ours_norm:.3e}, ||ref|| "
                        f"{ref_norm:.3e})")
    return "; ".join(problems) or None


def compare(model, vectors):
    """Every check against the official outputs: ``{check: what is wrong}`` of the failing ones (empty: equal)."""
    logits, feats = eval_outputs(model, vectors)
    problems = {"logits_eval": output_problem(logits, vectors["logits_eval"]),
                "features_eval": output_problem(feats, vectors["features_eval"])}
    model.train()
    x = flow.tensor(vectors["input"], requires_grad=True)
    logits = model(x)
    loss = flow.nn.functional.cross_entropy(logits, flow.tensor(vectors["target"]))
    loss.backward()
    problems["logits_train"] = output_problem(logits.numpy(), vectors["logits_train"])
    loss_diff = abs(loss.item() - float(vectors["loss_train"]))
    problems["loss_train"] = None if loss_diff <= LOSS_ATOL else f"|ours - ref| {loss_diff:.3e} > {LOSS_ATOL:g}"
    problems["input_grad"] = gradient_problem(x.grad.numpy(), vectors["input_grad"])
    params = dict(model.named_parameters())
    ref_grads = {k[len("grad/"):] for k in vectors.files if k.startswith("grad/")}
    assert ref_grads == set(params), "a reference gradient for every parameter, no more, no less"
    zero = zero_in_exact_arithmetic(model)
    for k, p in params.items():
        problems[f"grad/{k}"] = gradient_problem(p.grad.numpy(), vectors[f"grad/{k}"], zero=k in zero)
    return {k: v for k, v in problems.items() if v is not None}
