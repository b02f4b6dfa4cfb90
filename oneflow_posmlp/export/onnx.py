"""ONNX export with ``oneflow-onnx`` (the optional extra ``pip install -e .[onnx]``), checked in onnxruntime.

The model is traced by an ``nn.Graph`` and converted by oneflow-onnx 0.6.2. Three things in that path fail for
PosMLP, and the exported copy of the model is prepared around them (the caller's model is not changed):

* the GQPE/LRPE token maps (``(Wm, S, N, N)``) depend only on parameters, not on the input: at inference they
  are constants, so each gating unit gets its map precomputed (mask and gate folded in). This also removes the
  ``stack`` op of GQPE, which oneflow-onnx emits as-is and onnxruntime rejects (``INVALID_GRAPH``);
* on CPU OneFlow traces ``LayerNorm`` as ``mean``/``var``; oneflow-onnx converts ``var`` only from opset 13, where
  its ``ReduceSum`` conversion is wrong (axes as an attribute): LayerNorm is written as mean/sub/mul/rsqrt and
  opset 11 used;
* oneflow-onnx's ``remove_back_to_back`` optimizer merges the transposes of window partition/reverse wrongly
  (onnxruntime then differs from OneFlow by ~0.1 at level 1 of the demo model): it is not applied.

Shifted windows (``shift: true``, no official model) are refused: oneflow-onnx 0.6.2 cannot convert ``flow.roll``.
oneflow-onnx also uses ``np.bool`` (removed in numpy 1.24): ``np.bool = bool`` is set before it is imported.
"""
import contextlib
import copy
import os
import shutil
import sys
import tempfile

import numpy as np

OPSET = 11
SKIPPED_OPTIMIZERS = ("remove_back_to_back",)


class OnnxUnavailable(ImportError):
    """The ``onnx`` extra is not installed."""


class ExportError(ValueError):
    """A model or an export that cannot be exported as asked; the message says what to do."""


def import_oneflow_onnx():
    """The oneflow-onnx converter pieces and onnxruntime, or :class:`OnnxUnavailable` naming the fix."""
    if "bool" not in vars(np):
        np.bool = bool  # oneflow-onnx 0.6.2 uses the alias numpy 1.24 removed
    try:
        import onnx
        import onnxruntime
        from oneflow_onnx.oneflow2onnx import flow2onnx, optimizer
    except ImportError as err:
        raise OnnxUnavailable(f"ONNX export needs the onnx extra ({err}); install it with: pip install -e .[onnx]") \
            from None
    return onnx, onnxruntime, flow2onnx, optimizer


def _frozen_token_map_cls():
    import oneflow as flow

    from ..models.token_mixing import group_mix

    class FrozenTokenMap(flow.nn.Module):
        """A gating unit's positional mixing with its map as a constant: ``group_mix(map, x) + bias``."""

        def __init__(self, token_map, bias):
            super().__init__()
            self.register_buffer("token_map_const", token_map)
            self.bias = bias

        def forward(self, x, mask=None, gate=None):  # mask and gate are folded into the constant
            out = group_mix(self.token_map_const, x)
            return out + self.bias.unsqueeze(0) if self.bias is not None else out

    return FrozenTokenMap


def _layer_norm_cls():
    import oneflow as flow

    class ExportLayerNorm(flow.nn.Module):
        """LayerNorm over the last dim from ops every opset knows (same weights)."""

        def __init__(self, ln):
            super().__init__()
            self.weight, self.bias, self.eps = ln.weight, ln.bias, ln.eps

        def forward(self, x):
            d = x - x.mean(dim=-1, keepdim=True)
            var = (d * d).mean(dim=-1, keepdim=True)
            return d * (var + self.eps).rsqrt() * self.weight + self.bias

    return ExportLayerNorm


def effective_token_map(pos, mask, gate):
    """The ``(Wm, S, N, N)`` map ``TokenMap.forward`` mixes with for a given shift ``mask`` and dense ``gate``."""
    token_map = pos.token_map(mask)
    if gate is not None:
        token_map = token_map + gate.unsqueeze(1)
    if mask is not None and (gate is not None or not pos.uses_softmax):
        token_map = token_map * (mask == 0).to(token_map.dtype).unsqueeze(1)
    return token_map


def prepare_for_export(model):
    """An eval-mode copy of ``model`` with constant token maps and export-friendly LayerNorms."""
    import oneflow as flow

    from ..cpu_kernels import remove_cpu_kernels
    from ..models.layers import PosMLPLayer
    from ..models.posgu import PoSGU

    if any(getattr(level, "shifted", False) for level in model.levels):
        raise ExportError("this model has shifted windows (model.shift: true), whose cyclic shift (flow.roll) "
                         "oneflow-onnx 0.6.2 cannot convert; export a model with shift: false (all registered "
                         "PosMLP variants and the official models are)")
    frozen_cls, ln_cls = _frozen_token_map_cls(), _layer_norm_cls()
    m = copy.deepcopy(model).eval()
    remove_cpu_kernels(m)  # the official forms: no weight gathers or NumPy in the exported graph
    with flow.no_grad():
        for layer in m.modules():
            if isinstance(layer, PosMLPLayer) and isinstance(layer.gate_unit, PoSGU):
                unit, pos = layer.gate_unit, layer.gate_unit.pos
                gate = None if unit.pos_only else unit.token_proj_n_weight
                token_map = effective_token_map(pos, layer.shift_mask, gate).detach().clone()
                unit.pos = frozen_cls(token_map, pos.token_proj_n_bias if pos.absolute_bias else None)
                unit.pos_only = True
        for module in list(m.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, flow.nn.LayerNorm):
                    setattr(module, name, ln_cls(child))
    return m


def _graph(model):
    import oneflow as flow

    class InferenceGraph(flow.nn.Graph):
        def __init__(self, m):
            super().__init__()
            self.model = m

        def build(self, x):
            return self.model(x)

    return InferenceGraph(model)


def _convert(graph, weight_dir, path, opset):
    """oneflow-onnx's ``Export`` without the optimizers in :data:`SKIPPED_OPTIMIZERS`."""
    _, _, flow2onnx, optimizer = import_oneflow_onnx()
    onnx_graph = flow2onnx.ProcessFlowGraph(graph._full_graph_proto, weight_dir, opset=opset)
    saved = dict(optimizer._optimizers)
    try:
        for name in SKIPPED_OPTIMIZERS:
            optimizer._optimizers.pop(name, None)
        onnx_graph = optimizer.OptimizeGraph(onnx_graph)
    finally:
        optimizer._optimizers.clear()
        optimizer._optimizers.update(saved)
    with _quiet_stdout():  # onnx-simplifier (called by MakeModel) prints a line per constant it cannot fold
        model_proto = onnx_graph.MakeModel("posmlp", path)
    with open(path, "wb") as f:
        f.write(model_proto.SerializeToString())


@contextlib.contextmanager
def _quiet_stdout():
    """Send file descriptor 1 (C++ prints included) to /dev/null for the block."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def export_onnx(model, path, batch_size=1, opset=OPSET, check=True, atol=1e-4, seed=0):
    """Write ``model`` (eval mode) as ONNX to ``path`` for input ``(batch_size, in_chans, *img_size)``.

    With ``check``, onnxruntime runs the file on a random input and the largest absolute difference to OneFlow's
    eager output is returned (``ValueError`` if above ``atol``); else None.
    """
    import oneflow as flow

    _, ort, _, _ = import_oneflow_onnx()
    model = model.eval()
    prepared = prepare_for_export(model)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch_size, model.in_chans, *model.img_size)).astype(np.float32)
    graph = _graph(prepared)
    with flow.no_grad():
        graph(flow.tensor(x))  # compiles the graph oneflow-onnx reads
    weight_dir = tempfile.mkdtemp(prefix="posmlp_onnx_weights_")
    try:
        flow.save(graph.state_dict(), weight_dir)
        tmp = path + ".tmp"
        _convert(graph, weight_dir, tmp, opset)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(weight_dir, ignore_errors=True)
    if not check:
        return None
    with flow.no_grad():
        ref = model(flow.tensor(x))
    refs = [t.numpy() for t in (ref if isinstance(ref, (list, tuple)) else [ref])]
    outs = run_onnx(path, x)
    diff = max(float(np.abs(o - r).max()) for o, r in zip(outs, refs))
    if len(outs) != len(refs) or diff > atol:
        raise ExportError(f"{path}: onnxruntime's output differs from OneFlow's by {diff:.3g} (> {atol}); "
                         f"the export is wrong, do not use it")
    return diff


def run_onnx(path, x):
    """The outputs (list of arrays) of the ONNX model at ``path`` on input ``x`` in onnxruntime (CPU)."""
    _, ort, _, _ = import_oneflow_onnx()
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})
