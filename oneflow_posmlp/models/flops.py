"""FLOPs of a PosMLP forward pass, counted by forward hooks (``oneflow_posmlp.bench`` reports them).

FLOPs per image are ``2 x`` the multiply-adds of every convolution, linear layer and token mixing (``N x N``
per window and mixed channel of the gating units), counted on one image: norms, activations, softmax, bias
additions, the gate product ``u * v`` and the positional maps (built once per step from a few parameters,
shared by the batch) are not counted. posmlp_t at 224x224: 10.11 GFLOPs (``tests/test_models_flops.py``).
"""
from collections import defaultdict

import oneflow as flow
import oneflow.nn as nn

from .hooks import forward_hooks
from .posgu import SGU, PoSGU

FLOPS_NOTE = ("2 x multiply-adds of conv, linear and token mixing, one image; norms, activations, softmax, "
              "biases, the gate product and the positional maps not counted")


def _mixed_channels(m, channels, out_channels):
    """Channels a gating unit token-mixes out of its ``channels`` inputs (each mixing is ``N x N``); a PoSGU mixes
    as many channels as it outputs (the gated half with chunks 2, all with chunks 1), also when the block hands it
    ``u`` and ``v`` apart (its first input is then ``u`` alone)."""
    if isinstance(m, SGU):  # chunks - 1 dense mixings, each over one chunk
        return (channels - m.pad_dim) // m.chunks * (m.chunks - 1)
    return out_channels


def _local(t):
    """This rank's part of a global tensor (a local tensor as it is): the work one rank does."""
    return t.to_local() if t.is_global else t


def _partial_ranks(t):
    """Over how many ranks a global tensor is a partial sum (1 for a local tensor or no ``partial_sum`` axis)."""
    if not t.is_global:
        return 1
    hierarchy = t.placement.ranks.shape
    n = 1
    for axis, sbp in enumerate(t.sbp):
        if sbp == flow.sbp.partial_sum:
            n *= hierarchy[axis]
    return n


def count_flops(model, img_size=None, in_chans=None, ctx=None):
    """FLOPs (2 x multiply-adds) of one image's forward pass: ``(total, {"conv"|"linear"|"token_mixing": flops})``.

    ``img_size`` ``(H, W)`` and ``in_chans`` default to the model's (``model.img_size``, ``model.in_chans``).
    Runs one forward of a zero image ``(1, in_chans, H, W)`` in eval mode without gradients, with hooks on
    ``nn.Conv2d``, ``nn.Linear`` and the gating units (:class:`PoSGU`, :class:`SGU`); the model's hooks and
    train/eval mode are as before afterwards.

    ``ctx``: the :class:`~oneflow_posmlp.parallel.ParallelContext` a global model was placed by. Then every rank
    forwards one image of its own (a collective: call it on every rank) and counts **this rank's** FLOPs: each
    layer's work on its part of the tensors (a split projection's rows, a gating unit's channel groups, or the
    whole of a replicated one)."""
    img_size = tuple(img_size or model.img_size)
    in_chans = in_chans or model.in_chans
    by_kind = defaultdict(int)

    def conv_hook(m, inputs, out):
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        by_kind["conv"] += 2 * _local(out).numel() * k

    def linear_hook(m, inputs, out):  # a partial-sum output: this rank summed over its share of in_features
        by_kind["linear"] += 2 * _local(out).numel() * m.in_features // _partial_ranks(out)

    def mixing_hook(m, inputs, out):
        B, W, N, D = _local(inputs[0]).shape  # every mixed channel of every window maps N tokens to N
        by_kind["token_mixing"] += 2 * B * W * N * N * _mixed_channels(m, D, _local(out).shape[-1])

    kinds = ((nn.Conv2d, conv_hook), (nn.Linear, linear_hook), ((PoSGU, SGU), mixing_hook))
    hooks = [(m, None, hook) for m in model.modules() for cls, hook in kinds if isinstance(m, cls)]
    was_training = model.training
    model.eval()
    try:
        x = flow.zeros(1, in_chans, *img_size, device=_device_of(model))
        if ctx is not None and ctx.distributed:
            x = ctx.to_global_batch(x)
        with forward_hooks(hooks), flow.no_grad():
            model(x)
    finally:
        model.train(was_training)
    return sum(by_kind.values()), dict(by_kind)


def _device_of(model):
    p = next(iter(model.parameters()), None)
    if p is not None and p.is_global:
        return flow.device(p.placement.type)
    return p.device if p is not None else flow.device("cpu")
