"""bench/cli.py and tools/benchmark.py: JSON output, errors naming the fix, --help from the registry, --ranks 2."""
import importlib.util
import json
import os
import sys

import oneflow as flow
import pytest

from oneflow_posmlp.bench import cli
from oneflow_posmlp.models import list_models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "demo.yaml")


def load_tool():
    spec = importlib.util.spec_from_file_location("benchmark_tool", os.path.join(ROOT, "tools", "benchmark.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_the_tool_is_the_package_cli():
    assert load_tool().main is cli.main


def test_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert cli.main(["--config", DEMO, "--batch-size", "2", "--steps", "1", "--modes", "eval-eager,eval-graph",
                     "--img-size", "64", "--json", str(out)]) == 0
    assert "eval-graph" in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert list(res["modes"]) == ["eval-eager", "eval-graph"] and res["img_size"] == [64, 64]
    assert res["model"].endswith("demo.yaml model") and res["model_config"]["embed_dims"] == [16, 32, 64, 128]


def test_opts_reach_the_train_step(tmp_path, capsys):
    out = tmp_path / "t.json"
    assert cli.main(["--config", DEMO, "--batch-size", "4", "--steps", "1", "--modes", "train-eager", "--opts",
                     "train.weight_decay=0.0321", "train.clip_grad=0.25", "--json", str(out)]) == 0
    assert "weight decay 0.0321, 0 (per group)" in capsys.readouterr().out
    step = json.loads(out.read_text())["modes"]["train-eager"]["train_step"]
    assert step["weight_decay"] == [0.0321, 0.0] and step["clip_grad"] == 0.25
    assert step["lr"] == pytest.approx(2.0e-3 * 4 / 32)  # demo: lr 2e-3 at lr_base_batch 32, scaled to batch 4


def test_help_lists_the_registry(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert ", ".join(list_models()) in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("argv, message", [
    (["--model", "posmlp_x"], "unknown model name 'posmlp_x'"),
    (["--model", "posmlp_t", "--modes", "train-fast"], "unknown mode"),
    (["--model", "posmlp_t", "--amp"], "--amp needs --device cuda"),
    (["--model", "posmlp_t", "--warmup", "0"], "--warmup must be an integer >= 1"),
    (["--model", "posmlp_t", "--img-size", "200"], "do not tile"),
    (["--model", "posmlp_t", "--batch-size", "7", "--ranks", "2"], "does not split over --ranks 2"),
    (["--model", "posmlp_t", "--ranks", "0"], "--ranks must be an integer >= 1"),
    (["--model", "posmlp_t", "--opts", "train.weight_decy=0.1"], "train.weight_decay"),
])
def test_bad_requests_print_the_problem(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err


@pytest.mark.skipif(flow.cuda.is_available(), reason="tests the error on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(capsys):
    assert cli.main(["--model", "posmlp_t", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.distributed
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
    assert r["layout"] == {"data_parallel": 2, "tensor_parallel": 1, "tensor_parallel_mode": "groups",
                           "pipeline_parallel": 1}
    # data parallel: each rank runs the whole model on its 2 images
    assert r["flops_per_image_per_rank"] == r["flops_per_image"] and r["images_per_rank"] == 2
    assert r["train_step_flops_per_rank"] == 3 * 2 * r["flops_per_image"]
    assert all(m["images_per_s"] > 0 for m in r["modes"].values())


@pytest.mark.distributed
def test_the_cli_launches_its_own_ranks(tmp_path):
    """Without a launcher, --ranks 2 starts `oneflow.distributed.launch --module oneflow_posmlp.bench.cli`."""
    from launch import run

    out = tmp_path / "own.json"
    res = run([sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), "--config", "configs/demo.yaml",
               "--batch-size", "2", "--steps", "1", "--modes", "eval-eager", "--ranks", "2", "--json", str(out)])
    assert "2 data-parallel ranks" in res.stdout
    assert json.loads(out.read_text())["ranks"] == 2
