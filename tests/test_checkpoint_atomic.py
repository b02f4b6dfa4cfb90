"""checkpoint/atomic.py: a directory is replaced whole or not at all, and a save killed between its two renames
costs the updates since the previous save, never the checkpoint (``recover``, called by every write and by
``--resume``)."""
import os
import sys

import pytest

from conftest import tiny_train_opts
from launch import run_bounded
from oneflow_posmlp.checkpoint import atomic
from oneflow_posmlp.checkpoint.atomic import atomic_path, recover

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_dir(path, text):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "data"), "w") as f:
        f.write(text)


def read_dir(path):
    with open(os.path.join(path, "data")) as f:
        return f.read()


def entries(parent):
    return sorted(os.listdir(parent))


def test_a_directory_is_replaced_and_nothing_is_left_beside_it(tmp_path):
    dst = tmp_path / "last"
    write_dir(dst, "old")
    with atomic_path(dst) as tmp:
        write_dir(tmp, "new")
    assert read_dir(dst) == "new" and entries(tmp_path) == ["last"]


def test_a_failing_write_leaves_the_old_directory(tmp_path):
    dst = tmp_path / "last"
    write_dir(dst, "old")
    with pytest.raises(OSError):
        with atomic_path(dst) as tmp:
            write_dir(tmp, "half")
            raise OSError(28, "No space left on device")
    assert read_dir(dst) == "old" and entries(tmp_path) == ["last"]


def test_a_failing_second_rename_puts_the_old_directory_back(tmp_path, monkeypatch):
    dst = tmp_path / "last"
    write_dir(dst, "old")
    real_rename = os.rename

    def rename(src, target):
        if os.path.basename(str(src)).startswith(".last.tmp-"):  # the new one into place
            raise OSError(5, "Input/output error")
        real_rename(src, target)

    monkeypatch.setattr(atomic.os, "rename", rename)
    with pytest.raises(OSError, match="Input/output"):
        with atomic_path(dst) as tmp:
            write_dir(tmp, "new")
    monkeypatch.undo()
    assert read_dir(dst) == "old" and entries(tmp_path) == ["last"]


def test_recover_puts_back_what_a_kill_between_the_renames_left_aside(tmp_path):
    dst = tmp_path / "last"
    write_dir(tmp_path / ".last.old", "previous")  # the state a kill after the first rename leaves
    write_dir(tmp_path / ".last.tmp-12345", "new")  # and the killed writer's copy
    write_dir(tmp_path / ".best.tmp-12345", "other")  # another output's: not this one's to remove
    note = recover(dst)
    assert read_dir(dst) == "previous" and entries(tmp_path) == [".best.tmp-12345", "last"]
    assert "restored the previous complete checkpoint" in note and str(dst) in note
    assert recover(dst) is None  # nothing left to do


def test_recover_drops_the_old_one_when_the_new_one_is_in_place(tmp_path):
    dst = tmp_path / "last"
    write_dir(dst, "new")
    write_dir(tmp_path / ".last.old", "previous")  # killed after the second rename
    assert recover(dst) is None
    assert read_dir(dst) == "new" and entries(tmp_path) == ["last"]


def test_recover_takes_the_aside_name_of_earlier_versions(tmp_path):
    dst = tmp_path / "last"
    write_dir(tmp_path / ".last.tmp-999.old", "previous")  # before: the old one went aside as TMP.old
    write_dir(tmp_path / ".last.tmp-999", "new")
    assert "restored" in recover(dst)
    assert read_dir(dst) == "previous" and entries(tmp_path) == ["last"]


def test_the_next_save_recovers_first(tmp_path):
    dst = tmp_path / "last"
    write_dir(tmp_path / ".last.old", "previous")
    with atomic_path(dst) as tmp:
        write_dir(tmp, "new")
    assert read_dir(dst) == "new" and entries(tmp_path) == ["last"]

@pytest.mark.slow

def test_resume_auto_continues_from_a_checkpoint_a_kill_left_aside(tiny_demo_root, tmp_path):
    """A run whose ``last`` a kill left as ``.last.old`` (the on-disk state of a SIGKILL between the save's two
    renames) resumes from it with ``--resume auto`` and says so, instead of training from scratch."""
    out = tmp_path / "run"
    train = [sys.executable, os.path.join(ROOT, "tools", "train.py"), "-c", "configs/demo.yaml", "--output", str(out)]
    opts = ["--opts", *tiny_train_opts(tiny_demo_root, **{"train.epochs": 1, "data.limit_train_batches": 2,
                                                            "train.ema": "false"})]
    res = run_bounded(train + opts, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    os.rename(out / "last", out / ".last.old")
    more = [o.replace("train.epochs=1", "train.epochs=2") for o in opts]
    res = run_bounded(train + ["--resume", "auto"] + more, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    log = (out / "log_rank0.txt").read_text()
    assert "restored the previous complete checkpoint" in log, log[-2000:]
    assert "resumed from" in log and "epoch 1, batch 0, update 2" in log, log[-2000:]
    assert not (out / ".last.old").exists()
