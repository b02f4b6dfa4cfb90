"""The uint8 input path (data/device.py): workers ship uint8, the device makes the float batch. Against the old
host float path (flowvision ToTensor/Normalize/RandomErasing in the worker), batch for batch; the prefetch order;
the CUDA-only switches with CUDA reported available."""
from unittest import mock

import numpy as np
import oneflow as flow
import pytest

from oneflow_posmlp.config import load_config
from oneflow_posmlp.data import SafeImageFolder, build_datasets, build_train_loader, build_val_loader
from oneflow_posmlp.data import ensure_demo_dataset
from oneflow_posmlp.data.device import DeviceErasing, DeviceLoader, DevicePrep
from oneflow_posmlp.data.loader import build_transforms


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return ensure_demo_dataset(tmp_path_factory.mktemp("d") / "shapes", train_per_class=4, val_per_class=2,
                               log=lambda *_: None)


def _cfg(**aug):
    cfg = load_config("configs/demo.yaml")
    cfg["aug"].update(aug)
    return cfg


def _loader_cfg(root):
    cfg = _cfg(mixup=0.0, cutmix=0.0)
    cfg["data"].update(root=str(root), num_workers=0, demo=False)
    cfg["model"]["num_classes"] = 4
    cfg["train"]["batch_size"] = 4
    return cfg


def _both(cfg, root, train, indices, epoch=0):
    """The old float batch and the new uint8 -> device batch of ``indices``."""
    split = "train" if train else "val"
    old = SafeImageFolder(f"{root}/{split}", build_transforms(cfg, train, "float"), seed=7 if train else None)
    new = SafeImageFolder(f"{root}/{split}", build_transforms(cfg, train, "uint8"), seed=7 if train else None)
    old.set_epoch(epoch)
    new.set_epoch(epoch)
    a = flow.stack([old[i][0] for i in indices])
    items = [new[i][0] for i in indices]
    if isinstance(items[0], tuple):
        images = (flow.stack([im for im, _ in items]), flow.stack([b for _, b in items]))
    else:
        images = flow.stack(items)
        assert images.dtype == flow.uint8 and tuple(images.shape[1:]) == tuple(a.shape[1:])
    erasing = DeviceErasing(cfg["aug"]["remode"]) if train and cfg["aug"]["reprob"] > 0 else None
    prep = DevicePrep(cfg["aug"]["mean"], cfg["aug"]["std"], "cpu", erasing)
    b, = prep((images,))
    return a.numpy(), b.numpy()


@pytest.mark.parametrize("aug", [dict(), dict(auto_augment="", color_jitter=0.4, vflip=0.5),
                                 dict(reprob=1.0, remode="const", recount=3)], ids=["randaug", "jitter", "erase"])
def test_train_batch_equals_the_host_float_path(demo_root, aug):
    cfg = _cfg(**aug)
    for epoch in (0, 1):
        old, new = _both(cfg, demo_root, True, range(8), epoch)
        np.testing.assert_allclose(new, old, rtol=0, atol=1e-6)
        if aug.get("reprob"):
            assert (old == 0).mean() > 0.02  # the boxes were there, and at the same places


def test_eval_batch_equals_the_host_float_path(demo_root):
    old, new = _both(_cfg(), demo_root, False, range(8))
    np.testing.assert_allclose(new, old, rtol=0, atol=1e-6)


def test_noise_erasing_erases_the_same_boxes_reproducibly(demo_root):
    cfg = _cfg(reprob=1.0, remode="pixel", recount=2)
    old, new = _both(cfg, demo_root, True, range(8))
    _, again = _both(cfg, demo_root, True, range(8))
    np.testing.assert_array_equal(new, again)  # per-sample boxes and noise seeds: the same batch again
    plain, _ = _both(_cfg(reprob=0.0), demo_root, True, range(8))
    # outside the boxes both paths keep the image; inside both replaced it by noise (other draws, same law)
    kept_old, kept_new = np.isclose(old, plain, atol=1e-6), np.isclose(new, plain, atol=1e-6)
    assert (kept_old.all(1) == kept_new.all(1)).mean() > 0.999
    noise = new[~kept_new]
    assert noise.size > 100 and abs(noise.mean()) < 0.2 and 0.8 < noise.std() < 1.2


def test_loaders_ship_uint8_and_hand_out_normalised_floats(demo_root):
    cfg = _loader_cfg(demo_root)
    train, val = build_datasets(cfg)
    assert train[0][0].dtype == flow.uint8
    loader, sampler = build_train_loader(cfg, train)
    sampler.set_epoch(0)
    x, y = next(iter(loader))
    assert x.dtype == flow.float32 and x.shape == (4, 3, *cfg["model"]["img_size"]) and x.min() < 0
    x, y, valid = next(iter(build_val_loader(cfg, val)))
    assert x.dtype == flow.float32 and valid.dtype == flow.int64


def test_prefetch_issues_the_next_copy_before_handing_out_a_batch():
    events = []

    def prep(batch):
        events.append(("copy", batch))
        return batch

    loader = DeviceLoader([0, 1, 2], prep, prefetch=True)
    for batch in loader:
        events.append(("step", batch))
    assert events == [("copy", 0), ("copy", 1), ("step", 0), ("copy", 2), ("step", 1), ("step", 2)]
    events.clear()
    for batch in DeviceLoader([0, 1], prep, prefetch=False):  # CPU: nothing held back
        events.append(("step", batch))
    assert events == [("copy", 0), ("step", 0), ("copy", 1), ("step", 1)]


def test_cuda_runs_pin_and_prefetch(demo_root):
    """The CUDA switches' Python logic, with CUDA reported available (no CUDA kernel runs)."""
    cfg = _loader_cfg(demo_root)
    train, val = build_datasets(cfg)
    cpu = build_train_loader(cfg, train)[0]
    assert not cpu.loader.pin_memory and not cpu.prefetch
    cfg["dist"]["device"] = "cuda"
    with mock.patch.object(flow.cuda, "is_available", return_value=True), \
            mock.patch.object(flow.cuda, "device_count", return_value=1):
        loader = build_train_loader(cfg, train)[0]
        assert loader.loader.pin_memory and loader.prefetch and loader.prep.device == "cuda"
        evl = build_val_loader(cfg, val)
        assert evl.loader.pin_memory and evl.prefetch
