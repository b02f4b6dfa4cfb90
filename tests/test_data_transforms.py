"""flowvision-based train/eval transforms from the config's aug section."""
import random

import numpy as np
import pytest
from flowvision.transforms import InterpolationMode
from PIL import Image

from oneflow_posmlp.config import load_config
from oneflow_posmlp.data import build_eval_transform, build_train_transform, build_transforms
from oneflow_posmlp.data.transforms import RandomResizedCropAndInterpolation


def image(h=50, w=60, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def official(size=32):
    return load_config("configs/posmlp_t.yaml", [f"model.img_size={size}", "model.win_size=[1,1,1,1]"])


def test_official_train_recipe_builds_and_outputs_normalised_tensors():
    cfg = official()
    t = build_transforms(cfg, True)
    names = [type(op).__name__ for op in t.transforms]
    assert names == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "RandAugment", "ToTensor",
                     "Normalize"]
    random.seed(0)
    np.random.seed(0)
    x = t(image())
    assert tuple(x.shape) == (3, 32, 32) and x.dtype.__str__().endswith("float32")
    assert float(x.min()) < 0 and float(x.std()) > 0.1  # normalised (not [0, 1]) and not a blank image


def test_random_interpolation_draws_bilinear_and_bicubic():
    crop = RandomResizedCropAndInterpolation((8, 8), interpolation="random")
    seen = set()
    import flowvision.transforms.functional as F

    real = F.resized_crop
    try:
        F.resized_crop = lambda img, i, j, h, w, size, mode: seen.add(mode) or real(img, i, j, h, w, size, mode)
        random.seed(0)
        for _ in range(20):
            crop(image())
    finally:
        F.resized_crop = real
    assert seen == {InterpolationMode.BILINEAR, InterpolationMode.BICUBIC}
    fixed = RandomResizedCropAndInterpolation((8, 8), interpolation="bicubic")
    assert fixed.interpolation == InterpolationMode.BICUBIC and "bicubic" in repr(fixed)


def test_color_jitter_only_without_auto_augment_and_erasing_when_asked():
    cfg = official()
    a = dict(cfg["aug"], auto_augment="", reprob=0.5, vflip=0.5)
    names = [type(op).__name__ for op in build_train_transform(a, [32, 32]).transforms]
    assert names == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "RandomVerticalFlip", "ColorJitter",
                     "ToTensor", "Normalize", "RandomErasing"]
    a = dict(a, color_jitter=0.0, hflip=0.0, vflip=0.0, reprob=0.0)
    assert [type(op).__name__ for op in build_train_transform(a, [32, 32]).transforms] == \
        ["RandomResizedCropAndInterpolation", "ToTensor", "Normalize"]


@pytest.mark.parametrize("crop_pct,resized", [(0.9, 35), (0.875, 36), (1.0, 32)])
def test_eval_resizes_by_crop_pct_then_centre_crops(crop_pct, resized):
    cfg = official()
    t = build_eval_transform(dict(cfg["aug"], crop_pct=crop_pct), [32, 32])
    assert t.transforms[0].size == resized
    a, b = t(image(seed=3)), t(image(seed=3))
    assert tuple(a.shape) == (3, 32, 32) and np.array_equal(a.numpy(), b.numpy())  # deterministic


def _big_jpegs(root, n=6, size=(500, 375)):
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = root / "train" / "a"
    folder.mkdir(parents=True)
    for i in range(n):
        yy, xx = np.mgrid[0:size[1], 0:size[0]]
        arr = np.stack([(xx * (0.3 + 0.1 * c) + yy * 0.2 + 40 * i) % 255 for c in range(3)], -1).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"{i}.jpg", quality=90)
    return folder


def test_draft_decode_crops_what_a_full_decode_crops(tmp_path):
    """data.decode: draft: the same random draws and crop boxes, a reduced JPEG decode where the box allows it;
    the result differs from a full decode only by resampling (measured here: mean |difference| < 3 of 255)."""
    from unittest import mock

    from PIL.JpegImagePlugin import JpegImageFile

    from oneflow_posmlp.data import SafeImageFolder

    folder = _big_jpegs(tmp_path)
    a = dict(load_config("configs/demo.yaml")["aug"], auto_augment="", color_jitter=0.0, scale=[0.9, 1.0])
    full = SafeImageFolder(str(folder.parent), build_train_transform(a, [64, 64], "uint8"), seed=1)
    draft = SafeImageFolder(str(folder.parent), build_train_transform(a, [64, 64], "uint8", "draft"), seed=1,
                            lazy=True)
    with mock.patch.object(JpegImageFile, "draft", autospec=True, side_effect=JpegImageFile.draft) as drafted:
        for i in range(len(full)):
            x, y = full[i][0].numpy().astype(np.float64), draft[i][0].numpy().astype(np.float64)
            assert x.shape == y.shape and np.abs(x - y).mean() < 3.0, (i, np.abs(x - y).mean())
    assert drafted.call_count == len(full)  # a 500x375 box >= 2 x 64 everywhere: each image drafted
    (folder / "0.jpg").write_bytes((folder / "0.jpg").read_bytes()[:2000])  # truncated: skipped, not fatal
    img, label = draft[0]
    assert draft.skipped == 1 and img.shape == (3, 64, 64)
