"""Tar shards (data/shards.py, tools/make_shards.py): the same samples, order, labels and augmentation as the
folder; WebDataset members; every bad-input case one clear error or the corrupt-image skip."""
import json
import os
import shutil
import tarfile

import numpy as np
import pytest

from oneflow_posmlp.cli.make_shards import main as make_shards_main
from oneflow_posmlp.config import load_config
from oneflow_posmlp.data import SafeImageFolder, build_datasets, ensure_demo_dataset
from oneflow_posmlp.data.loader import build_transforms
from oneflow_posmlp.data.shards import ShardDataset, ShardError, index_path, index_shards, make_shards


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return ensure_demo_dataset(tmp_path_factory.mktemp("d") / "shapes", train_per_class=6, val_per_class=2,
                               log=lambda *_: None)


@pytest.fixture
def shards(tmp_path, demo_root):
    dst = tmp_path / "shards"
    assert make_shards_main(["--src", str(demo_root), "--dst", str(dst), "--shard-mb", "0.01"]) == 0
    return dst


def test_shards_hold_the_folder_sample_for_sample(demo_root, shards):
    names = sorted(os.listdir(shards))
    assert "train-000000.tar" in names and "train-000001.tar" in names and "val-index.json" in names
    with tarfile.open(shards / "train-000000.tar") as tar:  # WebDataset members
        members = tar.getnames()
    assert members[:2] == ["00000000.jpg", "00000000.cls"]
    cfg = load_config("configs/demo.yaml")
    folder = SafeImageFolder(f"{demo_root}/train", build_transforms(cfg, True, "uint8"), seed=3)
    sharded = ShardDataset(str(shards), "train", build_transforms(cfg, True, "uint8"), seed=3)
    assert sharded.classes == folder.classes and len(sharded) == len(folder)
    for ds in (folder, sharded):
        ds.set_epoch(2)
    for i in range(len(folder)):
        a, b = folder[i], sharded[i]
        assert a[1] == b[1] and np.array_equal(a[0].numpy(), b[0].numpy())
    index = json.loads(open(index_path(shards, "train")).read())
    assert all(len(s["sha256"]) == 64 and s["size"] > 0 for s in index["shards"])


def test_config_reads_shards(demo_root, shards):
    cfg = load_config("configs/demo.yaml")
    cfg["data"].update(root=str(shards), format="shards", demo=False)
    cfg["model"]["num_classes"] = 4
    train, val = build_datasets(cfg)
    assert isinstance(train, ShardDataset) and len(train) == 24 and len(val) == 8
    cfg["model"]["num_classes"] = 5
    with pytest.raises(Exception, match="has 4 classes but model.num_classes is 5"):
        build_datasets(cfg)


def test_index_only_indexes_shards_made_elsewhere(shards):
    before = json.loads(open(index_path(shards, "val")).read())
    os.remove(index_path(shards, "val"))
    (shards / "classes.txt").write_text("\n".join(before["classes"]) + "\n")
    assert make_shards_main(["--index-only", "--dst", str(shards), "--splits", "val",
                             "--classes", str(shards / "classes.txt")]) == 0
    assert json.loads(open(index_path(shards, "val")).read()) == before


def test_truncated_or_missing_shard_is_named(shards):
    path = shards / "train-000001.tar"
    data = path.read_bytes()
    path.write_bytes(data[:-1024])
    with pytest.raises(ShardError, match="train-000001.tar is .* bytes but the index says .*truncated"):
        ShardDataset(str(shards), "train")
    path.unlink()
    with pytest.raises(ShardError, match="train-000001.tar named by .* is missing"):
        ShardDataset(str(shards), "train")


def test_changed_shard_or_index_of_other_shards_is_named(shards, tmp_path):
    ds = ShardDataset(str(shards), "train")
    # another data set's index (same sizes by construction here: the index of the val shards renamed)
    index = json.loads(open(index_path(shards, "train")).read())
    index["samples"]["offset"] = [o + 1024 for o in index["samples"]["offset"]]
    open(index_path(shards, "train"), "w").write(json.dumps(index))
    moved = ShardDataset(str(shards), "train")
    with pytest.raises(ShardError, match="does not hold sample .* re-index with tools/make_shards.py --index-only"):
        moved[0]
    # a shard changed in place, same size: the header check at the read finds it
    path = shards / "train-000000.tar"
    data = bytearray(path.read_bytes())
    data[0:8] = b"zzzzzzzz"  # the first member's name
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="train-000000.tar does not hold sample 00000000"):
        ds[0]
    with pytest.raises(ShardError, match="does not match the sha256"):
        ShardDataset(str(shards), "train", verify=True)


def test_member_not_an_image_is_a_skipped_corrupt_image(tmp_path, demo_root):
    src = tmp_path / "src"
    shutil.copytree(demo_root, src)
    victim = sorted((src / "train" / "circle").iterdir())[0]
    victim.write_bytes(b"not an image")
    make_shards(str(src), str(tmp_path / "s"), log=lambda *_: None)
    ds = ShardDataset(str(tmp_path / "s"), "train")
    img, label = ds[0]
    assert ds.skipped == 1 and label == 0


def test_labels_outside_the_classes_and_no_index(tmp_path, shards):
    with pytest.raises(ShardError, match="labels run to 3 but there are 2 classes"):
        index_shards(str(shards), "train", classes=["a", "b"], log=lambda *_: None)
    with pytest.raises(ShardError, match="no shard index .*make_shards.py"):
        ShardDataset(str(tmp_path), "train")
    assert make_shards_main(["--index-only", "--dst", str(tmp_path)]) == 2


@pytest.mark.distributed
@pytest.mark.slow
def test_two_ranks_train_alike_on_folder_and_shards_with_a_mid_epoch_resume(tiny_demo_root, tmp_path):
    """The same run on the folder and on its shards: the same losses and weights on 2 ranks (sampler, rank split,
    per-sample seeds), and the shard run stopped mid-epoch (train.max_minutes) and resumed ends identically."""
    from launch import max_state_diff, run_many, train_argv, updates

    shards = tmp_path / "shards"
    make_shards(tiny_demo_root, str(shards), shard_mb=0.02, log=lambda *_: None)
    common = {"data.limit_train_batches": 0, "data.num_workers": 1, "train.ema": "true"}
    on_shards = {"data.format": "shards", "data.root": str(shards), **common}
    runs = [{"tool": "train.py", "argv": train_argv(tiny_demo_root, tmp_path / "folder", **common)},
            {"tool": "train.py", "argv": train_argv(tiny_demo_root, tmp_path / "shards_run", **on_shards)},
            {"tool": "train.py", "argv": train_argv(tiny_demo_root, tmp_path / "stopped",
                                                    **{"train.max_minutes": 0.001, **on_shards}),
             "expect_error": True},
            {"tool": "train.py", "argv": train_argv(tiny_demo_root, tmp_path / "stopped", "--resume", "auto",
                                                    **on_shards)}]
    results, job = run_many(2, runs, tmp_path / "job")
    assert all(r is not None for r in results), job
    assert [r["code"] for r in results[0]] == [0, 0] and [r["code"] for r in results[1]] == [0, 0], job
    assert [r["code"] for r in results[2]] == [75, 75], results[2][0]["stderr"][-2000:]
    assert [r["code"] for r in results[3]] == [0, 0], results[3][0]["stderr"][-2000:]
    folder, sharded = updates(tmp_path / "folder"), updates(tmp_path / "shards_run")
    assert len(folder) == 4 and folder == sharded
    assert max_state_diff(tmp_path / "folder" / "last", tmp_path / "shards_run" / "last") == 0
    log = (tmp_path / "stopped" / "log_rank0.txt").read_text()
    resumed = [line for line in log.splitlines() if "resumed from" in line][-1]
    assert "epoch 0, batch 1," in resumed, resumed  # mid-epoch (4 batches per epoch per rank)
    assert max_state_diff(tmp_path / "folder" / "last", tmp_path / "stopped" / "last") == 0
