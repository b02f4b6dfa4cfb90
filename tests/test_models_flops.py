"""models/flops.py: the FLOP counter against hand counts and the published posmlp_t figure."""
import oneflow as flow
import oneflow.nn as nn

from oneflow_posmlp.models import build_model, create_model
from oneflow_posmlp.models.flops import count_flops
from oneflow_posmlp.models.posgu import SGU, PoSGU

# 32x32 -> feature maps 8/4/2/1, tiled by windows 4/4/2/1 (N = 16, 16, 4, 1 tokens per window).
TINY = {"img_size": 32, "embed_dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "win_size": [4, 4, 2, 1],
        "gamma": [2, 4, 8, 16], "num_classes": 5}


class ConvLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.grouped = nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=4)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(self.grouped(self.conv(x)).flatten(1))


class Gate(nn.Module):
    """A gating unit alone on one window of 4x4 = 16 tokens with 8 hidden channels."""

    def __init__(self, unit):
        super().__init__()
        self.unit = unit

    def forward(self, x):
        return self.unit(x.reshape(1, 1, 16, 8))


def test_flops_match_hand_counts():
    # conv 3->4, 3x3 on 8x8: 64 outputs x 4 channels x 27 MACs; grouped 4->8 (groups 4), stride 2: 16 x 8 x 9 x 1;
    # linear 128 -> 5: 5 x 128 MACs. FLOPs = 2 x MACs.
    total, by_kind = count_flops(ConvLinear(), (8, 8), in_chans=3)
    assert by_kind == {"conv": 2 * (64 * 4 * 27 + 16 * 8 * 9), "linear": 2 * 5 * 128}
    assert total == 2 * (6912 + 1152 + 640)
    # PoSGU, chunks 2: 4 gated channels, each 16 tokens x 16 tokens; chunks 1: all 8 channels are mixed.
    # gMLP's SGU with 4 chunks of 2 channels: 3 chained dense mixings of 2 channels.
    units = ((PoSGU(dim=8, win_size=4, chunks=2, gamma=2), 4), (PoSGU(dim=8, win_size=4, chunks=1, gamma=2), 8),
             (SGU(dim=8, win_size=4, chunks=4), 3 * 2))
    for unit, mixed in units:
        assert count_flops(Gate(unit), (8, 16), in_chans=1)[1] == {"token_mixing": 2 * 16 * 16 * mixed}


def test_flops_of_a_tiny_posmlp_match_a_hand_count():
    """Multiply-adds of TINY written out layer by layer (mlp_ratio 4, 4, 4, 2; chunks 2; conv downsampling)."""
    conv = (16 * 16 * 4 * 3 * 9        # stem conv 3->4, 3x3 stride 2: 16x16 map
            + 8 * 8 * 8 * 4 * 9        # stem conv 4->8, 3x3 stride 2: 8x8 map
            + 8 * 8 * 8 * 8            # stem conv 1x1 8->8
            + 4 * 4 * 16 * 9           # level 1 downsampling, depthwise-grouped 8->16 (1 input channel per output)
            + 2 * 2 * 32 * 9 + 1 * 1 * 64 * 9)  # levels 2 and 3
    # per level: tokens T, dim d, hidden h; proj_c_e T*d*h, proj_c_s T*(h/2)*d; head 64 -> 5
    linear = sum(T * d * h + T * (h // 2) * d for T, d, h in ((64, 8, 32), (16, 16, 64), (4, 32, 128), (1, 64, 128)))
    linear += 64 * 5
    # token mixing: each of T tokens takes N inputs in each of the h/2 gated channels
    mixing = sum(T * N * h // 2 for T, N, h in ((64, 16, 32), (16, 16, 64), (4, 4, 128), (1, 1, 128)))
    total, by_kind = count_flops(build_model(TINY))
    assert by_kind == {"conv": 2 * conv, "linear": 2 * linear, "token_mixing": 2 * mixing}
    assert total == 2 * (54208 + 86336 + 25664) == 332416


def test_posmlp_t_is_10_11_gflops_per_image():
    """The figure docs/benchmark.md and the tool report for posmlp_t at 224x224 (2 x MACs)."""
    total, by_kind = count_flops(create_model("posmlp_t"))
    assert f"{total / 1e9:.2f}" == "10.11" and total == sum(by_kind.values())


def test_counting_leaves_the_model_as_it_was():
    model = build_model(TINY)
    calls = []
    model.head.register_forward_hook(lambda m, i, o: calls.append("mine"))
    model.train()
    count_flops(model)
    assert model.training and all(m.training for m in model.modules())
    assert list(model.head._forward_hooks.values())[0] is not None and len(model.head._forward_hooks) == 1
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules() if m is not model.head)
    calls.clear()
    with flow.no_grad():
        model(flow.zeros(1, 3, 32, 32))
    assert calls == ["mine"]  # the user's hook survived and still runs
