"""ImageFolder with clear errors for bad folders, corrupt images skipped (warned and counted), and
per-sample seeded augmentation (a sample's augmentation depends only on seed, epoch and index)."""
import logging
import multiprocessing
import os
import random

import numpy as np
import oneflow as flow
from flowvision.datasets import ImageFolder
from flowvision.datasets.folder import IMG_EXTENSIONS

_log = logging.getLogger("oneflow_posmlp.data")


class DataError(ValueError):
    """A data folder problem; the message names the folder and the fix."""


def check_image_folder(root):
    """Raise :class:`DataError` for a missing folder, no class folders, or an empty class folder."""
    if not os.path.isdir(root):
        raise DataError(f"data folder {root} does not exist; set data.root to an ImageFolder root "
                        f"(<root>/<split>/<class>/*.jpg) or use the demo config (-c demo)")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not classes:
        raise DataError(f"data folder {root} has no class sub-folders; expected {root}/<class>/<image files>")
    for c in classes:
        folder = os.path.join(root, c)
        if not any(f.lower().endswith(IMG_EXTENSIONS) for _, _, files in os.walk(folder, followlinks=True)
                   for f in files):
            raise DataError(f"class folder {folder} holds no images ({', '.join(IMG_EXTENSIONS)}); "
                            f"add images or remove the folder")
    return classes


class SafeImageFolder(ImageFolder):
    """flowvision ``ImageFolder`` that substitutes the next readable image (with its own label) for a corrupt one.

    A file PIL cannot decode (garbage, truncated, empty) is logged as a warning once per process and marked
    in a flag array shared with forked DataLoader workers; marked files are passed over without decoding
    again. ``skipped`` is the number of distinct corrupt files met so far (parent and workers together).
    Batches keep their size, so shapes stay static. With ``seed`` set, the transform of sample ``i`` in
    epoch ``e`` runs with Python/NumPy/OneFlow RNGs seeded from ``(seed, e, i)`` (and the caller's RNG
    states restored after), so augmentation does not depend on worker count or on resuming.
    """

    def __init__(self, root, transform=None, seed=None):
        check_image_folder(root)
        super().__init__(root, transform=transform)
        self.seed = seed
        self.epoch = 0
        self._bad = multiprocessing.RawArray("b", len(self.samples))  # 1 = corrupt; shared with forked workers

    @property
    def skipped(self):
        """Distinct corrupt images met so far, over the main process and its DataLoader workers."""
        return int(np.frombuffer(self._bad, dtype=np.int8).sum())

    def set_epoch(self, epoch):
        self.epoch = epoch

    def _load(self, index):
        path, target = self.samples[index]
        return self.loader(path), target

    def __getitem__(self, index):
        for attempt in range(len(self.samples)):
            i = (index + attempt) % len(self.samples)
            if self._bad[i]:
                continue
            try:
                img, target = self._load(i)
                break
            except (OSError, ValueError, SyntaxError) as err:  # PIL's errors for truncated/corrupt files
                self._bad[i] = 1
                _log.warning("skipping corrupt image %s (%s: %s); %d skipped so far", self.samples[i][0],
                             type(err).__name__, err, self.skipped)
        else:
            raise DataError(f"no readable image in {self.root}: all {len(self.samples)} files failed to decode")
        if self.transform is not None:
            img = self._seeded(index, self.transform, img)
        return img, target

    def _seeded(self, index, fn, img):
        """``fn(img)`` with Python/NumPy/OneFlow RNGs seeded from ``(seed, epoch, index)`` (flowvision's flips and
        erasing draw from OneFlow's RNG, crops and RandAugment from NumPy's and Python's). In the training
        process the caller's RNG states are restored after; in a DataLoader worker, whose RNGs nobody else
        uses, they are not (that saves about 1 ms per image of OneFlow state copying)."""
        if self.seed is None:
            return fn(img)
        s = int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]) % (2 ** 31)
        in_worker = flow.utils.data.get_worker_info() is not None
        saved = None if in_worker else (random.getstate(), np.random.get_state(), flow.get_rng_state())
        random.seed(s)
        np.random.seed(s)
        flow.manual_seed(s)
        try:
            return fn(img)
        finally:
            if saved is not None:
                random.setstate(saved[0])
                np.random.set_state(saved[1])
                flow.set_rng_state(saved[2])


class PaddedDataset(flow.utils.data.Dataset):
    """Pads ``base`` to ``length`` items by repeating; item -> ``(img, target, valid)`` with ``valid = 0`` for
    padding, so every rank gets equal, static-shape eval batches and metrics count each sample once."""

    def __init__(self, base, length):
        self.base, self.length = base, max(length, len(base))

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        img, target = self.base[i % len(self.base)]
        return img, target, int(i < len(self.base))


class SyntheticDataset(flow.utils.data.Dataset):
    """Random normalised images and labels of a fixed size (benchmarks and smoke runs)."""

    def __init__(self, length, img_size, num_classes, seed=0):
        self.length, self.img_size, self.num_classes, self.seed = length, img_size, num_classes, seed

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        rng = np.random.default_rng(self.seed + i)
        img = rng.standard_normal((3, *self.img_size)).astype(np.float32)
        return flow.tensor(img), int(rng.integers(self.num_classes))
