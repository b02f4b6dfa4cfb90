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


def test_host_reads_per_update_counts_the_update_routine():
    """One host read per update of the trainer's update routine (drop-path masks, the step object's micro-batches,
    the schedule), eager with gradient accumulation."""
    from conftest import TINY_MODEL_CFG
    from oneflow_posmlp.bench.data import host_reads_per_update

    cfg = load_config("configs/demo.yaml", ["train.grad_accum_steps=2", "train.batch_size=4"])
    cfg["model"] = dict(TINY_MODEL_CFG, img_size=[32, 32], win_size=[4, 4, 2, 1], gamma=[2, 4, 8, 8], drop_path_rate=0.2)
    assert host_reads_per_update(cfg, graph=False) == 1
