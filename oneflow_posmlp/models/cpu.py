"""Which tensors take the CPU formulations of the model (and the tensor-parallel ones: :func:`channels_split`).

OneFlow 0.9.0 runs some elementwise forms slowly on CPU: oneDNN executes a broadcast along a non-last
axis, such as ``(B, W, N, C) + (1, 1, N, 1)`` or a conv's ``bias_add`` over ``(B, C, H, W)``, with its
reference kernel (``DNNL_VERBOSE=1`` prints ``binary,ref:any``), 100-250x slower than the same sum written
with the broadcast operand's trailing axes kept (``(BW, N, C, 1) + (1, N, 1, 1)``, bit-identical), and
``nn.LayerNorm`` is a Python composition of such broadcasts (:mod:`.norm`). The model writes those
operations in the fast form only for CPU tensors; on CUDA the built-in (fused) kernels stay.
"""
import oneflow as flow


def on_cpu(x):
    """True for a local CPU tensor or a global tensor on a CPU placement."""
    return x.placement.type == "cpu" if x.is_global else not x.is_cuda


def channels_split(x):
    """True for a global tensor split over ranks along its last (channel) axis: a gating unit's activations under
    the tensor-parallel ``groups`` plan (``parallel/tensor_parallel.py``), where each rank holds its channel
    groups; the token mixing and the LayerNorm then take forms that keep every rank on its own channels."""
    return x.is_global and any(s == flow.sbp.split(x.ndim - 1) for s in x.sbp)
