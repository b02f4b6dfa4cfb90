"""tools/benchmark.py: the FLOP counter against hand counts, every mode on a tiny model, clear errors.
Figures are reported by the tool, never asserted (docs/benchmark.md has measured ones)."""
import importlib.util
import json
import os

import oneflow as flow
import oneflow.nn as nn
import pytest

from oneflow_posmlp.benchmark import MODES, BenchmarkError, count_flops, format_table, run_benchmark
from oneflow_posmlp.models import build_model
from oneflow_posmlp.models.posgu import SGU, PoSGU

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# 32x32 -> feature maps 8/4/2/1, tiled by windows 4/4/2/1 (N = 16, 16, 4, 1 tokens per window).
TINY = {"img_size": 32, "embed_dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "win_size": [4, 4, 2, 1],
        "gamma": [2, 4, 8, 16], "num_classes": 5}


def load_tool():
    spec = importlib.util.spec_from_file_location("benchmark_tool", os.path.join(ROOT, "tools", "benchmark.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


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


def test_every_mode_runs_and_reports(tmp_path):
    res = run_benchmark(TINY, batch_size=4, steps=1, warmup=1, profile=True, profile_repeat=1)
    assert res["model"] == "custom" and res["batch_size"] == 4 and res["img_size"] == [32, 32]
    assert res["device"] == "cpu" and res["oneflow"] == flow.__version__ and res["threads"] >= 1
    assert list(res["modes"]) == list(MODES)
    for mode, r in res["modes"].items():
        assert r["images_per_s"] > 0 and r["step_ms"] > 0 and r["wall_s"] > 0 and r["timed_steps"] == 1, mode
        assert r["peak_rss_mb"] > 0 and r["peak_rss_growth_mb"] >= 0 and r["rss_delta_mb"] is not None, mode
        assert ("compile_s" in r) == mode.endswith("graph"), mode
    assert res["params"] == sum(p.numel() for p in build_model(TINY).parameters())
    assert res["flops_per_image"] == sum(res["flops_by_kind"].values()) == 332416
    prof = res["profile"]
    assert prof["forward_ms"] > 0 and prof["hooked_forward_ms"] > 0
    for kind in ("LayerNorm", "Linear", "Conv2d", "GELU", "window partition/reverse", "token mixing (group_mix bmm)",
                 "positional maps (GQPE/LRPE token_map)", "other"):
        assert kind in prof["by_kind_ms"], kind
    table = format_table(res)
    assert all(mode in table for mode in MODES) and "LayerNorm" in table
    json.loads(json.dumps(res, default=str))

    # the patched functions and the hooks are gone after the profile
    from oneflow_posmlp.models import layers, token_mixing, windows

    assert layers.window_partition is windows.window_partition and token_mixing.group_mix.__name__ == "group_mix"
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in build_model(TINY).modules())


def test_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "b.json"
    load_tool().main(["--config", os.path.join(ROOT, "configs", "demo.yaml"), "--batch-size", "2", "--steps", "1",
                      "--modes", "eval-eager,eval-graph", "--img-size", "64", "--json", str(out)])
    assert "eval-graph" in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert list(res["modes"]) == ["eval-eager", "eval-graph"] and res["img_size"] == [64, 64]
    assert res["model"].endswith("demo.yaml model") and res["model_config"]["embed_dims"] == [16, 32, 64, 128]


@pytest.mark.parametrize("argv, message", [
    (["--model", "posmlp_x"], "unknown model name 'posmlp_x'"),
    (["--model", "posmlp_t", "--modes", "train-fast"], "unknown mode"),
    (["--model", "posmlp_t", "--amp"], "--amp needs --device cuda"),
    (["--model", "posmlp_t", "--warmup", "0"], "--warmup must be an integer >= 1"),
    (["--model", "posmlp_t", "--img-size", "200"], "do not tile"),
    (["--model", "posmlp_t", "--batch-size", "7", "--ranks", "2"], "does not split over --ranks 2"),
    (["--model", "posmlp_t", "--ranks", "0"], "--ranks must be an integer >= 1"),
])
def test_bad_requests_exit_with_the_problem(argv, message):
    with pytest.raises(SystemExit, match=message):
        load_tool().main(argv)


@pytest.mark.skipif(flow.cuda.is_available(), reason="tests the error on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(BenchmarkError, match="no CUDA device"):
        run_benchmark(TINY, device="cuda")
    with pytest.raises(SystemExit, match="no CUDA device.*--device cpu"):
        load_tool().main(["--model", "posmlp_t", "--device", "cuda"])


def test_two_data_parallel_ranks_report_the_global_batch(tmp_path):
    """--ranks 2: the tool launches itself on 2 ranks (here launched directly, with the tests' timeout); rank 0
    reports the same global batch, split over the ranks."""
    from launch import launcher, run

    out = tmp_path / "r2.json"
    res = run(launcher(2) + [os.path.join(ROOT, "tools", "benchmark.py"), "--config", "configs/demo.yaml",
                             "--batch-size", "4", "--steps", "1", "--modes", "train-eager,eval-eager", "--ranks", "2",
                             "--json", str(out)])
    assert "2 data-parallel ranks" in res.stdout and res.stdout.count("wrote") == 1
    r = json.loads(out.read_text())
    assert r["ranks"] == 2 and r["batch_size"] == 4 and list(r["modes"]) == ["train-eager", "eval-eager"]
    assert all(m["images_per_s"] > 0 for m in r["modes"].values())
