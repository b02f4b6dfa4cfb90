"""ImageFolder checks, corrupt-image skipping, per-sample seeded augmentation, padding for eval."""
import numpy as np
import oneflow as flow
import pytest

from oneflow_posmlp.data import DataError, PaddedDataset, SafeImageFolder, ensure_demo_dataset
from oneflow_posmlp.data.loader import build_transforms
from oneflow_posmlp.config import load_config


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return ensure_demo_dataset(tmp_path_factory.mktemp("d") / "shapes", train_per_class=4, val_per_class=2,
                               log=lambda *_: None)


def test_missing_folder_and_empty_class_are_named(tmp_path):
    with pytest.raises(DataError, match="does not exist; set data.root"):
        SafeImageFolder(str(tmp_path / "nope"))
    (tmp_path / "root" / "cats").mkdir(parents=True)
    with pytest.raises(DataError, match="class folder .*cats holds no images"):
        SafeImageFolder(str(tmp_path / "root"))


def test_corrupt_image_is_skipped_and_counted(tmp_path, demo_root, caplog):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(f"{demo_root}/train", root)
    victim = sorted((root / "circle").iterdir())[0]
    victim.write_bytes(b"not a jpeg at all")
    ds = SafeImageFolder(str(root))
    img, target = ds[0]  # the corrupt circle: replaced by the next readable image
    assert ds.skipped == 1 and target == 0
    assert "skipping corrupt image" in caplog.text


def test_seeded_augmentation_depends_on_epoch_and_index_only(demo_root):
    cfg = load_config("configs/demo.yaml")
    ds = SafeImageFolder(f"{demo_root}/train", build_transforms(cfg, True), seed=7)
    a = ds[3][0].numpy()
    flow.manual_seed(123)
    np.random.seed(5)
    state = flow.get_rng_state()
    b = ds[3][0].numpy()
    assert np.array_equal(a, b)
    assert np.array_equal(state.numpy(), flow.get_rng_state().numpy())  # the caller's RNG is left alone
    ds.set_epoch(1)
    assert not np.array_equal(a, ds[3][0].numpy())


def test_padded_dataset_marks_padding(demo_root):
    ds = SafeImageFolder(f"{demo_root}/val")
    padded = PaddedDataset(ds, 11)
    assert len(padded) == 11
    assert [padded[i][2] for i in range(11)] == [1] * len(ds) + [0] * (11 - len(ds))


def test_corrupt_images_met_in_worker_processes_are_counted(tmp_path, demo_root):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(f"{demo_root}/train", root)
    garbage, truncated = sorted((root / "square").iterdir())[:2]
    garbage.write_bytes(b"\xff\xd8 not really a jpeg")
    truncated.write_bytes(truncated.read_bytes()[:200])  # a JPEG cut short, as by an interrupted copy
    cfg = load_config("configs/demo.yaml")
    ds = SafeImageFolder(str(root), build_transforms(cfg, False))
    loader = flow.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    n = sum(x.shape[0] for x, _ in loader)
    assert n == len(ds) and ds.skipped == 2  # every item delivered; both bad files counted in the parent


def test_a_folder_of_only_corrupt_files_is_an_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"")
    ds = SafeImageFolder(str(tmp_path))
    with pytest.raises(DataError, match="no readable image .* all 1 files failed to decode"):
        ds[0]
    assert ds.skipped == 1
