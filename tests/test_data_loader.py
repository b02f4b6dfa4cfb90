"""Datasets and sharded loaders from a config: demo/ImageFolder/synthetic, shapes, shards, padding, resume."""
import numpy as np
import pytest

from oneflow_posmlp.config import load_config
from oneflow_posmlp.data import DataError, build_datasets, build_train_loader, build_val_loader


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "shapes"
    return load_config("configs/demo.yaml", [f"data.root={root}", "data.demo_train_per_class=6",
                                             "data.demo_val_per_class=3", "data.num_workers=0",
                                             "train.batch_size=4"])


def batches(loader):
    return [[t.numpy() for t in b] for b in loader]


def test_demo_is_generated_on_first_use_and_shapes_are_static(cfg):
    train, val = build_datasets(cfg)
    assert (len(train), len(val), train.classes) == (24, 12, ["circle", "cross", "square", "triangle"])
    loader, sampler = build_train_loader(cfg, train, rank=1, world=2)
    got = batches(loader)
    assert len(got) == sampler.num_batches() == 24 // 4
    assert all(x.shape == (2, 3, 32, 32) and y.shape == (2,) and y.dtype == np.int64 for x, y in got)


def test_ranks_read_disjoint_shards_and_eval_counts_each_image_once(cfg):
    train, val = build_datasets(cfg)
    shards = [list(build_train_loader(cfg, train, r, 2)[1]) for r in range(2)]
    assert not set(shards[0]) & set(shards[1]) and len(shards[0]) == len(shards[1])
    c = dict(cfg, train=dict(cfg["train"], batch_size=10))  # 12 val images -> 2 global batches of 10, 8 padded
    seen = []
    for r in range(2):
        for x, y, valid in build_val_loader(c, val, r, 2):
            assert x.shape[0] == 5
            seen += [int(v) for v in valid.numpy()]
    assert len(seen) == 20 and sum(seen) == 12


def test_resumed_loader_continues_with_the_same_batches(cfg):
    train, _ = build_datasets(cfg)
    loader, sampler = build_train_loader(cfg, train, 0, 1)
    sampler.set_epoch(3)
    train.set_epoch(3)
    full = batches(loader)
    loader2, sampler2 = build_train_loader(cfg, train, 0, 1)
    sampler2.load_state_dict({"epoch": 3, "consumed": 2 * 4, "seed": cfg["train"]["seed"]})
    rest = batches(loader2)
    assert len(rest) == len(full) - 2
    for (xa, ya), (xb, yb) in zip(full[2:], rest):
        assert np.array_equal(ya, yb) and np.array_equal(xa, xb)  # same images, same augmentation


def test_worker_processes_give_the_same_batches(cfg):
    train, _ = build_datasets(cfg)
    a = batches(build_train_loader(cfg, train, 0, 1)[0])
    b = batches(build_train_loader(dict(cfg, data=dict(cfg["data"], num_workers=2)), train, 0, 1)[0])
    assert all(np.array_equal(p, q) for ba, bb in zip(a, b) for p, q in zip(ba, bb)) and len(a) == len(b)


def test_synthetic_mode_needs_no_files(cfg):
    c = load_config("configs/demo.yaml", ["data.synthetic=true", "data.root=null", "data.synthetic_size=8"])
    train, val = build_datasets(c)
    x, y = train[0]
    assert tuple(x.shape) == (3, 32, 32) and 0 <= y < 4 and len(train) == 8 and len(val) == 2


def test_bad_data_is_named_before_training(cfg, tmp_path):
    with pytest.raises(DataError, match="data.root is not set"):
        build_datasets(load_config("configs/demo.yaml", ["data.root=null"]))
    with pytest.raises(DataError, match="does not exist"):
        build_datasets(load_config("configs/demo.yaml", [f"data.root={tmp_path / 'none'}", "data.demo=false"]))
    with pytest.raises(DataError, match="has 4 classes but model.num_classes is 5; set --opts model.num_classes=4"):
        build_datasets(load_config("configs/demo.yaml", [f"data.root={cfg['data']['root']}", "model.num_classes=5",
                                                         "data.demo_train_per_class=6", "data.demo_val_per_class=3"]))
    with pytest.raises(ValueError, match="not divisible by the 3 data-parallel ranks"):
        build_train_loader(cfg, build_datasets(cfg)[0], 0, 3)


def test_mixup_with_an_odd_local_batch_is_refused_before_training(cfg):
    train, _ = build_datasets(cfg)
    odd = dict(cfg, train=dict(cfg["train"], batch_size=6), aug=dict(cfg["aug"], mixup=0.8))
    with pytest.raises(ValueError, match="Mixup/CutMix needs an even batch per rank, .* = 3; use a multiple of 4"):
        build_train_loader(odd, train, 0, 2)
    build_train_loader(dict(odd, aug=dict(odd["aug"], mixup=0.0)), train, 0, 2)  # fine without mixup
