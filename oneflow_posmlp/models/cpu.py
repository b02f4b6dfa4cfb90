"""Which tensors take the CPU formulations of the model.

OneFlow 0.9.0 runs some elementwise forms slowly on CPU: oneDNN executes a broadcast along a non-last
axis, such as ``(B, W, N, C) + (1, 1, N, 1)`` or a conv's ``bias_add`` over ``(B, C, H, W)``, with its
reference kernel (``DNNL_VERBOSE=1`` prints ``binary,ref:any``), 100-250x slower than the same sum written
with the broadcast operand's trailing axes kept (``(BW, N, C, 1) + (1, N, 1, 1)``, bit-identical), and
``nn.LayerNorm`` is a Python composition of such broadcasts (:mod:`.norm`). The model writes those
operations in the fast form only for CPU tensors; on CUDA the built-in (fused) kernels stay.
"""


def on_cpu(x):
    """True for a local CPU tensor or a global tensor on a CPU placement."""
    return x.placement.type == "cpu" if x.is_global else not x.is_cuda
