"""The input-path benchmark (bench/data.py) on the small demo set: every figure present and sane; the official
pipeline's absence is reported, not fatal. (The figures themselves live in docs/benchmark.md, not in tests.)"""
import sys

from oneflow_posmlp.bench.data import format_data, official, run_data_benchmark
from oneflow_posmlp.config import load_config


def test_data_benchmark_reports_every_figure(tiny_demo_root):
    cfg = load_config("configs/demo.yaml", [f"data.root={tiny_demo_root}", "data.demo=false", "train.batch_size=8"])
    result = run_data_benchmark(cfg, images=8, workers=(1,), loader_batches=2, reads=False)
    for key in ("train_ms_per_image_uint8", "train_ms_per_image_float", "train_ms_per_image_draft", "eval_ms_per_image_uint8",
                "eval_ms_per_image_float", "loader_images_per_s_1_workers", "main_ms_per_batch_outside_step"):
        assert result[key] > 0, key
    assert "train ms per image per worker" in format_data(result)


def test_official_pipeline_without_torch_is_named(tiny_demo_root):
    cfg = load_config("configs/demo.yaml", [f"data.root={tiny_demo_root}", "data.demo=false"])
    res = official(sys.executable, tiny_demo_root, cfg, images=2, workers=(1,), batch=4)
    assert "torch" in res["error"]  # this Python has no torch: one line saying so
