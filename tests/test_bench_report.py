"""bench/report.py: the table of a result (no model needed)."""
import json

from oneflow_posmlp.bench.report import format_table, write_json

RESULT = {
    "model": "posmlp_t", "params": 20925538, "flops_per_image": 10.11e9, "img_size": [224, 224], "batch_size": 8,
    "device": "cpu", "amp": False, "oneflow": "0.9.0", "threads": 2, "ranks": 1, "steps": 3, "warmup": 1,
    "grad_accum_steps": 1, "peak": {"peak_flops": 90e9, "source": "measured: sgemm"}, "env": {"OPENBLAS_CORETYPE": "Haswell", "OMP_NUM_THREADS": None},
    "modes": {
        "train-eager": {"images_per_s": 0.58, "step_ms": 13884.0, "step_ms_min": 13633.0, "cpu_ms_min": 13000.0,
                        "achieved_flops_per_device": 5.86e9, "mfu": 0.0651, "mfu_cpu_time": 0.0699,
                        "peak_rss_mb": 2659.0,
                        "peak_rss_growth_mb": 2084.0, "rss_delta_mb": 2084.0,
                        "train_step": {"optimizer": "AdamW", "lr": 3.125e-05, "weight_decay": [0.067, 0.0],
                                       "eps": 1e-05, "clip_grad": 1.0, "clip_scope": "global", "amp": False}},
        "eval-graph": {"images_per_s": 2.3, "step_ms": 3500.0, "step_ms_min": 3400.0, "compile_s": 30.5,
                       "peak_rss_mb": 2700.0, "peak_rss_growth_mb": 41.0, "rss_delta_mb": None},
    },
    "profile": {"batch_size": 8, "forward_ms": 3191.0, "hooked_forward_ms": 3307.0, "repeat": 2,
                "by_kind_ms": {"Linear": 1117.0, "other": 59.2}},
}


def test_table(tmp_path):
    lines = format_table(RESULT).splitlines()
    assert lines[0].startswith("posmlp_t: 20,925,538 parameters, 10.11 GFLOPs/image (2 x MACs), 224x224, batch 8")
    assert lines[1] == "env: OPENBLAS_CORETYPE=Haswell, OMP_NUM_THREADS=(unset)"
    assert "AdamW lr 3.13e-05, weight decay 0.067, 0 (per group), eps 1e-05, clip 1 (global)" in lines[2]
    row = next(line for line in lines if line.startswith("eval-graph")).split()
    assert row[:5] == ["eval-graph", "2.30", "3500", "3400", "-"] and row[8] == "30.5" and row[-1] == "-"
    train = next(line for line in lines if line.startswith("train-eager")).split()
    assert train[4:8] == ["13000", "5.9", "0.065", "0.070"]  # cpu ms, GFLOP/s per device, MFU, MFU(cpu)
    assert "peak 90.0 GFLOP/s per device (measured: sgemm)" in format_table(RESULT)
    assert any(line.split()[:3] == ["Linear", "1117.0", "ms"] and line.endswith("33.8%") for line in lines)
    two = dict(RESULT, ranks=2, layout={"data_parallel": 2, "tensor_parallel": 1, "pipeline_parallel": 1})
    assert "2 data-parallel ranks (img/s global, memory of rank 0)" in format_table(two)
    tp = dict(two, layout={"data_parallel": 1, "tensor_parallel": 2, "pipeline_parallel": 1})
    assert "data_parallel 1 x tensor_parallel 2 x pipeline_parallel 1" in format_table(tp)
    write_json(RESULT, str(tmp_path / "sub" / "r.json"))
    assert json.loads((tmp_path / "sub" / "r.json").read_text())["model"] == "posmlp_t"
