"""bench/runner.py: every mode on a tiny model through the trainer's step objects, built from the config.
Figures are reported, never asserted (docs/benchmark.md has measured ones)."""
import json

import oneflow as flow
import pytest
import yaml

from oneflow_posmlp.bench.report import format_table
from oneflow_posmlp.bench.runner import MODES, Bench, BenchmarkError, benchmark_config, run_benchmark
from oneflow_posmlp.config import ConfigError
from oneflow_posmlp.engine.optim import AdamW, GraphGlobalClipAdamW
from oneflow_posmlp.engine.step import EagerStep, GraphStep
from oneflow_posmlp.models import build_model

# 32x32 -> feature maps 8/4/2/1, tiled by windows 4/4/2/1; the schema's default train: section (Mixup/CutMix,
# label smoothing, drop path 0.1 from the model defaults), as `--model NAME` benchmarks.
TINY = {"img_size": 32, "embed_dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "win_size": [4, 4, 2, 1],
        "gamma": [2, 4, 8, 16], "num_classes": 5}


@pytest.fixture
def tiny_yaml(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"model": TINY}))
    return str(path)


def test_every_mode_runs_and_reports(tiny_yaml):
    cfg = benchmark_config(tiny_yaml, batch_size=4)
    res = run_benchmark(cfg, steps=1, warmup=1, profile=True, profile_repeat=1)
    assert res["model"] == "custom" and res["batch_size"] == 4 and res["img_size"] == [32, 32]
    assert res["device"] == "cpu" and res["oneflow"] == flow.__version__ and res["threads"] >= 1
    assert list(res["modes"]) == list(MODES)
    for mode, r in res["modes"].items():
        assert r["images_per_s"] > 0 and r["step_ms"] > 0 and r["wall_s"] > 0 and r["timed_steps"] == 1, mode
        assert r["peak_rss_mb"] > 0 and r["peak_rss_growth_mb"] >= 0 and r["rss_delta_mb"] is not None, mode
        assert ("compile_s" in r) == mode.endswith("graph"), mode
        assert ("train_step" in r) == mode.startswith("train"), mode
    assert res["params"] == sum(p.numel() for p in build_model(TINY).parameters())
    assert res["flops_per_image"] == sum(res["flops_by_kind"].values()) == 332416
    peak = res["peak"]["peak_flops"]
    assert peak > 1e9 and "measured" in res["peak"]["source"]
    for mode, r in res["modes"].items():  # MFU from the counter: train steps are 3x the forward
        factor = 3 if mode.startswith("train") else 1
        assert r["flops_per_image"] == factor * 332416, mode
        assert r["achieved_flops_per_device"] == pytest.approx(r["images_per_s"] * factor * 332416), mode
        assert r["mfu"] == pytest.approx(r["achieved_flops_per_device"] / peak), mode
        assert 0 < r["mfu_cpu_time"] and r["cpu_ms_min"] > 0, mode
    assert "LayerNorm" in res["profile"]["by_kind_ms"]
    assert res["train_profile"]["by_kind_ms"]["Linear"]["backward"] > 0
    table = format_table(res)
    assert all(mode in table for mode in MODES) and "LayerNorm" in table and "weight decay 0.067, 0" in table
    json.loads(json.dumps(res, default=str))


def test_the_train_step_is_the_trainers_built_from_the_config(tiny_yaml):
    """No hyperparameter is the benchmark's own: --opts reach the built optimizer, the lr is scaled to the
    global batch as the trainer scales it, and clipping follows train.clip_grad / clip_scope."""
    cfg = benchmark_config(tiny_yaml, opts=["train.weight_decay=0.0123", "train.lr=4.0e-3", "train.lr_base_batch=8",
                                            "train.opt_eps=1.0e-7", "train.clip_grad=0.5"], batch_size=4)
    bench = Bench(cfg)
    eager = bench.training(graph=False)
    assert isinstance(eager.step, EagerStep) and type(eager.optimizer) is AdamW  # (fused on CUDA, engine/optim.py)
    groups = eager.optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.0123, 0.0]
    assert eager.lr == pytest.approx(4e-3 * 4 / 8) and groups[0]["eps"] == 1e-7
    assert eager.step.clip_grad == 0.5 and eager.clip_scope == "global"  # auto: one norm, eagerly
    graph = bench.training(graph=True)
    assert isinstance(graph.step, GraphStep) and graph.clip_scope == "group"  # auto: OneFlow's per group in a graph
    assert all(g["clip_grad_max_norm"] == 0.5 for g in graph.optimizer.param_groups)
    cfg = benchmark_config(tiny_yaml, opts=["train.clip_scope=global"], batch_size=4)
    assert type(Bench(cfg).training(graph=True).optimizer) is GraphGlobalClipAdamW

    res = run_benchmark(benchmark_config(tiny_yaml, opts=["train.weight_decay=0.0123"], batch_size=4),
                        modes=["train-eager"], steps=1)
    assert res["modes"]["train-eager"]["train_step"]["weight_decay"] == [0.0123, 0.0]


def test_gradient_accumulation_runs_the_update_in_micro_batches(tiny_yaml):
    """(Eager: a one-process graph with accumulation aborts in OneFlow 0.9.0 on CPU, in training too: the CPU
    LayerNorm's BatchNorm kernel meets the accumulation pass, `moving_mean` check failure.)"""
    cfg = benchmark_config(tiny_yaml, opts=["train.grad_accum_steps=2"], batch_size=4)
    bench = Bench(cfg)
    assert bench.micro == 2 and [tuple(x.shape) for x, _ in bench.micro_batches] == [(2, 3, 32, 32)] * 2
    assert tuple(bench.micro_batches[0][1].shape) == (2, 5)  # Mixup/CutMix soft targets, as the trainer's
    res = run_benchmark(cfg, modes=["train-eager"], steps=1)
    assert res["grad_accum_steps"] == 2 and res["modes"]["train-eager"]["images_per_s"] > 0


def test_requests_that_cannot_run(tiny_yaml):
    with pytest.raises(BenchmarkError, match="unknown mode"):
        run_benchmark(benchmark_config(tiny_yaml), modes=["train-fast"])
    with pytest.raises(BenchmarkError, match="even micro-batch"):
        run_benchmark(benchmark_config(tiny_yaml, batch_size=3), modes=["train-eager"])
    with pytest.raises(ConfigError, match="not divisible by train.grad_accum_steps"):
        benchmark_config(tiny_yaml, opts=["train.grad_accum_steps=2"], batch_size=3)


@pytest.mark.skipif(flow.cuda.is_available(), reason="tests the error on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(tiny_yaml):
    with pytest.raises(BenchmarkError, match="no CUDA device"):
        run_benchmark(benchmark_config(tiny_yaml, device="cuda"))
