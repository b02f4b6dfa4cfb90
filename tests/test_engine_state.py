"""Training checkpoints (oneflow_posmlp/engine/state.py): a full disk while saving is one clear error that names
the checkpoint and the space it needs, the previous checkpoint survives, and resuming from it works."""
import errno
import os
import sys

import oneflow as flow
import pytest

from conftest import tiny_train_opts
from launch import run_bounded
from oneflow_posmlp.checkpoint import CheckpointError, read_oneflow_checkpoint
from oneflow_posmlp.checkpoint.errors import _size
from oneflow_posmlp.config import load_config
from oneflow_posmlp.engine import Trainer
from oneflow_posmlp.engine.state import state_nbytes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _full_disk_save(real):
    def save(obj, path, *args, **kwargs):  # writes part of the checkpoint, then the disk is full
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "pickled_data"), "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    return save


def test_disk_full_keeps_the_previous_checkpoint(tiny_demo_root, tmp_path, monkeypatch):
    cfg = load_config("configs/demo.yaml", tiny_train_opts(tiny_demo_root, **{"train.epochs": 1,
                                                                             "data.limit_train_batches": 1}))
    trainer = Trainer(cfg, output_dir=str(tmp_path))
    trainer.fit()
    last = tmp_path / "last"
    before = {p.name: p.read_bytes() for p in last.rglob("*") if p.is_file()}
    monkeypatch.setattr(flow, "save", _full_disk_save(flow.save))
    with pytest.raises(CheckpointError) as err:
        trainer.save("last")
    msg = str(err.value)
    needed = state_nbytes(trainer.state())
    assert msg.startswith(f"no space left on the device while writing {last}: it needs about ")
    assert f"it needs about {_size(needed)}, " in msg and "is unchanged" in msg and needed > 100_000
    assert {p.name: p.read_bytes() for p in last.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary left


WRAPPER = """
import errno, os, runpy, sys
import oneflow_posmlp
import oneflow as flow
real, calls = flow.save, []
def save(obj, path, *a, **k):
    if os.path.basename(str(path)).startswith(".last.tmp"):
        calls.append(path)
        if len(calls) == 2:  # the second 'last' (end of epoch 1): the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
    return real(obj, path, *a, **k)
flow.save = save
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

@pytest.mark.slow

def test_cli_disk_full_is_one_error_line_and_the_run_resumes(tiny_demo_root, tmp_path):
    out = tmp_path / "out"
    cmd = [os.path.join(ROOT, "tools", "train.py"), "-c", "configs/demo.yaml", "--output", str(out), "--opts",
           *tiny_train_opts(tiny_demo_root, **{"train.epochs": 2, "data.limit_train_batches": 1})]
    env = dict(os.environ, GLOG_minloglevel="3")
    res = run_bounded([sys.executable, "-c", WRAPPER, *cmd], cwd=ROOT, capture_output=True, text=True,
                      timeout=300, env=env)
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert len(errors) == 1 and f"writing {out / 'last'}: it needs about " in errors[0], res.stderr[-2000:]
    assert read_oneflow_checkpoint(out / "last")["epoch"] == 1  # the previous 'last' (after epoch 0) survives
    res = run_bounded([sys.executable, *cmd, "--resume", "auto"], cwd=ROOT, capture_output=True, text=True,
                      timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resumed from" in (out / "log_rank0.txt").read_text()
    assert read_oneflow_checkpoint(out / "last")["epoch"] == 2
