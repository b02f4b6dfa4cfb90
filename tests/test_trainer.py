"""The trainer: a short real run, its checkpoints, logs and evaluation; bad input before training."""
import csv
import math
import os
import sys

import numpy as np
import oneflow as flow
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import tiny_train_opts
from launch import run_bounded
from oneflow_posmlp.checkpoint import CheckpointError, read_oneflow_checkpoint, save_weights
from oneflow_posmlp.checkpoint.oneflow_io import save_oneflow_weights
from oneflow_posmlp.config import load_config
from oneflow_posmlp.engine import Trainer
from oneflow_posmlp.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tool(name, *args):
    res = run_bounded([sys.executable, os.path.join(ROOT, "tools", name), *map(str, args)], capture_output=True,
                      text=True, timeout=300, cwd=ROOT, env=dict(os.environ, GLOG_minloglevel="3"))
    res.last_err = (res.stderr.strip().splitlines() or [""])[-1]
    return res


@pytest.fixture(scope="module")
def trained(tiny_demo_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run"))
    cfg = load_config("configs/demo.yaml", tiny_train_opts(tiny_demo_root, **{"aug.mixup": 0.8, "aug.cutmix": 1.0}))
    trainer = Trainer(cfg, output_dir=out)
    trainer.fit()
    return trainer, out


def test_run_writes_checkpoints_csv_and_tensorboard(trained):
    trainer, out = trained
    assert os.path.isdir(os.path.join(out, "last")) and os.path.isdir(os.path.join(out, "best"))
    assert trainer.updates == 2 * (64 // 16)
    with open(os.path.join(out, "summary.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert all(r["eval_top1"] and r["ema_eval_top1"] for r in rows)
    acc = EventAccumulator(os.path.join(out, "tb"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "train/images_per_sec", "train/data_time", "val/loss",
            "val/top1", "val/top5", "val_ema/top1", "val_ema/top5"} <= tags
    assert len(acc.Scalars("train/loss")) == trainer.updates
    assert float(rows[-1]["eval_top1"]) == pytest.approx(acc.Scalars("val/top1")[-1].value, abs=1e-3)
    assert b"embed_dims" in acc.Tensors("config")[0].tensor_proto.string_val[0]
    assert os.path.isfile(os.path.join(out, "log_rank0.txt"))


def test_lr_follows_warmup_then_cosine(trained):
    trainer, out = trained
    acc = EventAccumulator(os.path.join(out, "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    lrs = [e.value for e in acc.Scalars("train/lr")]
    t = trainer.cfg["train"]
    peak, warm, low, total = trainer.lr, t["warmup_lr"], t["min_lr"], 8  # 2 epochs x 4 updates, 4 of warm-up
    # logged after update k + 1: the rate it ran at, the schedule's value at k. Warm-up is linear from warmup_lr;
    # from then on the cosine runs over all updates (timm's CosineLRScheduler without warmup_prefix, as the
    # official runs)
    for k in range(4):
        assert lrs[k] == pytest.approx(warm + k * (peak - warm) / 4, rel=1e-5)
    for k in range(4, 8):
        assert lrs[k] == pytest.approx(low + 0.5 * (peak - low) * (1 + math.cos(math.pi * k / total)), rel=1e-5)


def test_eval_tool_reproduces_the_logged_accuracy_from_a_root_with_only_val(trained, tiny_demo_root, tmp_path):
    import shutil

    trainer, out = trained
    shutil.copytree(os.path.join(tiny_demo_root, "val"), tmp_path / "val")  # evaluation needs no training split
    res = tool("eval.py", "-c", "configs/demo.yaml", "--weights", os.path.join(out, "last"), "--opts",
               *tiny_train_opts(str(tmp_path)))
    assert res.returncode == 0, res.stderr
    import json

    got = json.loads(res.stdout.strip().splitlines()[-1])
    with open(os.path.join(out, "summary.csv")) as f:
        last = list(csv.DictReader(f))[-1]
    assert got["images"] == 16 and got["top1"] == pytest.approx(float(last["eval_top1"]), abs=1e-3)


@pytest.mark.parametrize("fmt", ["safetensors", "oneflow directory of the previous converter"])
def test_init_from_converted_weights_with_another_head(tiny_demo_root, tmp_path, fmt):
    cfg = load_config("configs/demo.yaml", tiny_train_opts(tiny_demo_root, **{"train.epochs": 1}))
    donor = build_model(dict(cfg["model"], num_classes=10))
    if fmt == "safetensors":
        save_weights({k: v.numpy() for k, v in donor.state_dict().items()}, tmp_path / "w")
    else:
        save_oneflow_weights(donor.state_dict(), str(tmp_path / "w"))
    trainer = Trainer(cfg, output_dir=str(tmp_path / "out"), init=str(tmp_path / "w"))
    w = trainer.model.levels[0].encoder[0].proj_c_e.weight.numpy()
    assert np.array_equal(w, donor.levels[0].encoder[0].proj_c_e.weight.numpy())
    assert tuple(trainer.model.head.weight.shape) == (4, 128)


def test_init_with_a_resume_says_once_that_the_resume_wins(trained, tiny_demo_root, tmp_path):
    import shutil

    _, out = trained
    run = tmp_path / "run"
    shutil.copytree(os.path.join(out, "last"), run / "last")
    cfg = load_config("configs/demo.yaml", tiny_train_opts(tiny_demo_root))
    donor = build_model(dict(cfg["model"], num_classes=10))
    save_weights({k: v.numpy() for k, v in donor.state_dict().items()}, tmp_path / "w")
    trainer = Trainer(cfg, output_dir=str(run), init=str(tmp_path / "w"), resume="auto")
    resumed = read_oneflow_checkpoint(run / "last", tensor=lambda a: a)["model"]["head.weight"]
    assert np.array_equal(trainer.model.head.weight.numpy(), resumed)  # the resumed weights, not the init's
    log = (run / "log_rank0.txt").read_text()
    assert log.count(f"--init {tmp_path / 'w'} is not used: --resume continues from {run / 'last'}") == 1, log


def test_resume_refuses_a_checkpoint_of_another_model(trained, tiny_demo_root, tmp_path):
    _, out = trained
    cfg = load_config("configs/demo.yaml", tiny_train_opts(tiny_demo_root, **{"model.gamma": "[4, 4, 8, 16]"}))
    with pytest.raises(CheckpointError, match="checkpoint is of another model \\(model.gamma"):
        Trainer(cfg, output_dir=str(tmp_path), resume=os.path.join(out, "last"))


@pytest.mark.parametrize("opts,needle", [
    (["data.root=/nonexistent/imagenet", "data.demo=false"], "data folder /nonexistent/imagenet/train does not exist"),
    (["train.optimizr=sgd"], "did you mean 'train.optimizer'"),
    (["model.num_classes=7"], "has 4 classes but model.num_classes is 7; set --opts model.num_classes=4"),
    (["train.graph=true", "train.scheduler=timm"], "a graph runs only OneFlow's schedulers"),
    (["train.graph=true", "dist.zero_stage=1"], "ZeRO is for CUDA runs, use dist.zero_stage=0 on CPU"),
    (["dist.activation_checkpointing=[0]"], "are nn.Graph options; set train.graph=true"),
    (["dist.tensor_parallel=2"], "tensor_parallel=2 x pipeline_parallel=1 = 2 ranks, but 1 were launched"),
])
def test_cli_bad_input_is_one_clear_line_before_training(tiny_demo_root, tmp_path, opts, needle):
    base = tiny_train_opts(tiny_demo_root)
    res = tool("train.py", "-c", "configs/demo.yaml", "--output", tmp_path, "--opts", *base, *opts)
    assert res.returncode == 2 and needle in res.last_err and "Traceback" not in res.stderr
    assert not os.path.exists(tmp_path / "last")


def test_cli_empty_class_folder(tiny_demo_root, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_demo_root, root)
    for f in (root / "train" / "cross").iterdir():
        f.unlink()
    res = tool("train.py", "-c", "configs/demo.yaml", "--output", tmp_path / "o", "--opts",
               *tiny_train_opts(str(root)))
    assert res.returncode == 2 and "cross holds no images" in res.last_err


def test_amp_on_cpu_is_reported_once_in_the_log(tiny_demo_root, tmp_path):
    cfg = load_config("configs/demo.yaml", tiny_train_opts(tiny_demo_root, **{"train.amp": "true"}))
    trainer = Trainer(cfg, output_dir=str(tmp_path))
    assert trainer.amp is False
    with open(os.path.join(str(tmp_path), "log_rank0.txt")) as f:
        assert f.read().count("train.amp: true is ignored: AMP (autocast, loss scaling) is CUDA-only") == 1


def test_mid_epoch_resume_needs_the_same_data_and_global_batch():
    """Rank r reads block r of every global batch, so a mid-epoch resume may change the data-parallel degree
    but not the global batch or the data set (the rest of the epoch would be another order)."""
    from types import SimpleNamespace

    from oneflow_posmlp.checkpoint import CheckpointError
    from oneflow_posmlp.engine.progress import check_data_order

    me = SimpleNamespace(batch_in_epoch=3, epoch=1, train_images=64, batch_size=16)
    state = {"train_images": 64, "config": {"train": {"batch_size": 16}}}
    check_data_order(state, "last", **vars(me))  # same order: fine, whatever the ranks
    with pytest.raises(CheckpointError, match="train.batch_size was 32, now 16"):
        check_data_order(dict(state, config={"train": {"batch_size": 32}}), "last", **vars(me))
    with pytest.raises(CheckpointError, match="train images was 60, now 64"):
        check_data_order(dict(state, train_images=60), "last", **vars(me))
    check_data_order(dict(state, train_images=60), "last", **dict(vars(me), batch_in_epoch=0))


def test_corrupt_images_are_reported_per_epoch_by_rank_0(tiny_demo_root, tmp_path):
    """Skips of all ranks summed in the epoch-end agreement: rank 0's log and TensorBoard; the file in the log."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_demo_root, root)
    victim = sorted((root / "train" / "circle").iterdir())[0]
    victim.write_bytes(b"not a jpeg")
    opts = tiny_train_opts(str(root), **{"train.epochs": 1, "train.eval_interval": 5, "data.num_workers": 1})
    trainer = Trainer(load_config("configs/demo.yaml", opts), output_dir=str(tmp_path / "run"))
    trainer.fit()
    log = (tmp_path / "run" / "log_rank0.txt").read_text()
    assert "epoch 0: 1 corrupt image(s) skipped so far on all 1 data-parallel rank(s)" in log
    assert f"skipping corrupt image {victim}" in log
    acc = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.value for e in acc.Scalars("data/corrupt_images_skipped")] == [1.0]
