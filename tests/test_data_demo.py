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
