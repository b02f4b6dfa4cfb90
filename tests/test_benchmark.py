"""tools/benchmark.py: the FLOP counter against hand counts, every mode on a tiny model, clear errors.
(Figures are reported by the tool, never asserted: see docs/benchmark.md.)"""
import json
import os
import subprocess
import sys

import oneflow as flow
import oneflow.nn as nn
import pytest

from oneflow_posmlp.benchmark import MODES, BenchmarkError, count_flops, format_table, run_benchmark
from oneflow_posmlp.models import build_model
from oneflow_posmlp.models.posgu import PoSGU

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def benchmark_cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)

TINY = {"img_size": 32, "embed_dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "win_size": [4, 4, 2, 1],
        "gamma": [2, 4, 8, 16], "num_classes": 5, "stem_norm": "LN"}


class ConvLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


class OneGate(nn.Module):
    """(1, 1, 8, 16) -> a PoSGU over 1 window of 4x4 = 16 tokens and 8 hidden channels (4 gated)."""

    def __init__(self):
        super().__init__()
        self.gate = PoSGU(dim=8, win_size=4, chunks=2, gamma=2)

    def forward(self, x):
        return self.gate(x.reshape(1, 1, 16, 8))


def test_flops_match_hand_counts():
    total, by_kind = count_flops(ConvLinear(), (8, 8))
    assert by_kind == {"conv": 2 * (4 * 8 * 8) * (3 * 3 * 3), "linear": 2 * 5 * 256}
    assert total == 13824 + 2560
    total, by_kind = count_flops(OneGate(), (8, 16), in_chans=1)
    assert by_kind == {"token_mixing": 2 * 16 * 16 * 4}


def test_every_mode_runs_and_reports(tmp_path):
    res = run_benchmark(TINY, batch_size=4, steps=1, warmup=1, profile=True)
    assert list(res["modes"]) == list(MODES)
    for mode, r in res["modes"].items():
        assert r["images_per_s"] > 0 and r["step_ms"] > 0 and r["peak_rss_mb"] > 0, mode
        assert ("compile_s" in r) == mode.endswith("graph"), mode
    assert res["params"] == sum(p.numel() for p in build_model(TINY).parameters()) and res["flops_per_image"] == sum(res["flops_by_kind"].values()) > 0
    assert res["profile"]["forward_ms"] > 0 and "LayerNorm" in res["profile"]["by_kind_ms"]
    assert "train-graph" in format_table(res)

    out = tmp_path / "b.json"
    res = benchmark_cli("--config", "configs/demo.yaml", "--batch-size", "2", "--steps", "1", "--modes", "eval-eager",
                        "--json", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "eval-eager" in res.stdout and list(json.loads(out.read_text())["modes"]) == ["eval-eager"]


def test_bad_requests_are_clear_errors():
    with pytest.raises(BenchmarkError, match="unknown mode"):
        run_benchmark(TINY, modes=["train-fast"])
    if not flow.cuda.is_available():
        with pytest.raises(BenchmarkError, match="no CUDA device"):
            run_benchmark(TINY, device="cuda")
    res = benchmark_cli("--model", "posmlp_x", "--steps", "1")
    assert res.returncode == 2 and "error:" in res.stderr and "posmlp_x" in res.stderr, res.stderr[-2000:]
