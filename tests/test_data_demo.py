"""The embedded demo data set."""
import os

import numpy as np
from PIL import Image

from oneflow_posmlp.data import CLASSES, ensure_demo_dataset


def test_generates_imagefolder_of_jpegs_deterministically(tmp_path):
    a = ensure_demo_dataset(tmp_path / "a", train_per_class=3, val_per_class=2, log=lambda *_: None)
    b = ensure_demo_dataset(tmp_path / "b", train_per_class=3, val_per_class=2, log=lambda *_: None)
    for split, n in (("train", 3), ("val", 2)):
        assert sorted(os.listdir(os.path.join(a, split))) == sorted(CLASSES)
        for c in CLASSES:
            files = sorted(os.listdir(os.path.join(a, split, c)))
            assert len(files) == n and all(f.endswith(".jpg") for f in files)
            for f in files:
                x = np.asarray(Image.open(os.path.join(a, split, c, f)))
                y = np.asarray(Image.open(os.path.join(b, split, c, f)))
                assert x.shape == (40, 40, 3) and np.array_equal(x, y)


def test_second_call_reuses_and_incomplete_is_not_mistaken(tmp_path):
    root = tmp_path / "d"
    ensure_demo_dataset(root, train_per_class=1, val_per_class=1, log=lambda *_: None)
    stamp = os.path.getmtime(root / ".complete")
    ensure_demo_dataset(root, train_per_class=1, val_per_class=1, log=lambda *_: None)
    assert os.path.getmtime(root / ".complete") == stamp
    other = tmp_path / "half"
    (other / "train").mkdir(parents=True)
    try:
        ensure_demo_dataset(other, log=lambda *_: None)
    except FileExistsError as err:
        assert "not a complete demo data set" in str(err)
    else:
        raise AssertionError("a half-written folder must not be taken for the demo set")


def _generate(root, queue):
    try:
        ensure_demo_dataset(root, train_per_class=20, val_per_class=5, log=lambda *_: None)
        queue.put("ok")
    except Exception as err:  # reported to the test
        queue.put(repr(err))


def _tree(root):
    """``{relative path: file bytes}`` of every file under ``root``."""
    out = {}
    for folder, _, files in os.walk(root):
        for f in files:
            path = os.path.join(folder, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = fh.read()
    return out


def test_ranks_generating_at_once_agree(tmp_path, tmp_path_factory):
    """Three processes generating the same set into one folder at once all succeed and leave exactly the set one
    process generates alone: the same files, byte for byte (one writer won; nothing mixed or half-written)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    root = str(tmp_path / "shared")
    procs = [ctx.Process(target=_generate, args=(root, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert sorted(queue.get(timeout=5) for _ in procs) == ["ok"] * 3
    assert sorted(os.listdir(tmp_path)) == ["shared"]  # no temporary folder left behind
    alone = tmp_path_factory.mktemp("alone") / "d"
    ensure_demo_dataset(alone, train_per_class=20, val_per_class=5, log=lambda *_: None)
    shared, expected = _tree(root), _tree(alone)
    assert len([k for k in expected if k.endswith(".jpg")]) == len(CLASSES) * 25
    assert sorted(shared) == sorted(expected)
    assert [k for k in expected if shared[k] != expected[k]] == []


def test_killed_generation_is_redone_and_its_leftovers_removed(tmp_path):
    import socket
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    stale = tmp_path / f"d.tmp-{socket.gethostname()}-{dead.pid}"
    (stale / "train" / "circle").mkdir(parents=True)
    ensure_demo_dataset(tmp_path / "d", train_per_class=1, val_per_class=1, log=lambda *_: None)
    assert sorted(os.listdir(tmp_path)) == ["d"]


def test_a_demo_set_of_other_parameters_is_not_reused(tmp_path):
    import pytest

    from oneflow_posmlp.data import DataError

    ensure_demo_dataset(tmp_path / "d", train_per_class=1, val_per_class=1, log=lambda *_: None)
    with pytest.raises(DataError, match="holds a demo data set of other parameters"):
        ensure_demo_dataset(tmp_path / "d", train_per_class=2, val_per_class=1, log=lambda *_: None)
