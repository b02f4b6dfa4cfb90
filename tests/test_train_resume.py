"""A run killed with SIGKILL mid-epoch and resumed with --resume ends with the same weights as an
uninterrupted run. Tolerance: max abs difference 1e-6 on every model and EMA tensor (the CPU run is bitwise
deterministic). Mixup/CutMix, drop path, dropout and EMA are on: every random draw of a step is seeded by
(seed, update, micro-batch) (engine/randomness.py), so no generator state has to survive the kill.
The nn.Graph variant also resumes the AdamW moments and step held inside the graph, with drop path on (its
masks are a graph input); it runs without dropout, whose masks inside a compiled graph come from the
generator the graph was compiled with (docs/parallel.md gives the measured difference)."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import tiny_train_opts
from launch import run_bounded
from oneflow_posmlp.checkpoint import read_oneflow_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-6


MODES = {"eager": {"model.drop_rate": 0.1}, "graph": {"train.graph": "true"}}


def train_cmd(root, out, mode, *extra):
    opts = tiny_train_opts(root, **{"train.epochs": 2, "output.save_every_steps": 1, "aug.mixup": 0.8,
                                    "aug.cutmix": 1.0, "model.drop_path_rate": 0.1, **MODES[mode]})
    return [sys.executable, os.path.join(ROOT, "tools", "train.py"), "-c", "configs/demo.yaml", "--output", str(out),
            *extra, "--opts", *opts]


def run(cmd):
    return run_bounded(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("mode", sorted(MODES))
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(mode, tiny_demo_root, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    res = run(train_cmd(tiny_demo_root, full, mode))
    assert res.returncode == 0, res.stderr[-2000:]

    proc = subprocess.Popen(train_cmd(tiny_demo_root, killed, mode), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    log = killed / "log_rank0.txt"
    deadline = time.time() + 240
    try:
        while time.time() < deadline:  # kill once update 6 (of 8; epoch 1 holds updates 5-8) is logged
            if log.exists() and "epoch 1 update 6:" in log.read_text():
                break
            if proc.poll() is not None:
                raise AssertionError("the run finished before it could be killed")
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    res = run(train_cmd(tiny_demo_root, killed, mode, "--resume", "auto"))
    assert res.returncode == 0, res.stderr[-2000:]
    resumed = [line for line in log.read_text().splitlines() if "resumed from" in line][-1]
    epoch, batch = (int(resumed.split(key)[1].split(",")[0]) for key in ("epoch ", "batch "))
    assert epoch == 1 and 0 < batch < 4, resumed  # really mid-epoch

    a, b = read_oneflow_checkpoint(full / "last"), read_oneflow_checkpoint(killed / "last")
    assert a["updates"] == b["updates"] == 8
    assert a["optimizer"]["state"]["step"] == b["optimizer"]["state"]["step"] == 8
    for part in ("model", "ema"):
        for k, v in a[part].items():
            assert np.abs(v.numpy().astype(np.float64) - b[part][k].numpy()).max() <= TOL, (part, k)
