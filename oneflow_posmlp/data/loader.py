"""Train/val datasets and loaders from a config: ImageFolder (or the generated demo set, or synthetic tensors),
flowvision transforms, each data-parallel rank reading only its own shard.

``rank``/``world`` below are the DATA-PARALLEL rank and degree (with tensor/pipeline parallelism these differ
from the process rank and world size). A train loader yields ``(x (b, 3, H, W) float32, y (b,) int64)``
with ``b = train.batch_size / grad_accum_steps / world`` (every batch full: static shapes for nn.Graph); the
global batch is the ranks' local batches concatenated, i.e. ``split(0)``. A val loader yields
``(x, y, valid (b,) int64)`` where ``valid = 0`` marks padding, so metrics count each image once.

Loader workers ignore the run's stop signals (``train.stop_signals``, ``engine/stop.py``): a scheduler or a
launcher signalling the whole process group reaches them too, and OneFlow's workers would exit on SIGTERM, so
the training process would fail on its next batch instead of stopping at the update boundary with a checkpoint.
The training process ends its workers itself (and they die with it: OneFlow sets their parent-death signal).
"""
import functools
import os
import signal

import oneflow as flow

from ..config.signals import resolve_signals
from .dataset import DataError, PaddedDataset, SafeImageFolder, SyntheticDataset
from .demo import ensure_demo_dataset
from .mixup import build_mixup, build_train_criterion  # noqa: F401  (re-exported: the data API)
from .sampler import ResumableDistributedSampler
from .transforms import build_transforms


def data_root(cfg):
    """``data.root``, generating the demo set there first when ``data.demo`` is true."""
    d = cfg["data"]
    if d["root"] is None:
        raise DataError("data.root is not set; give an ImageFolder root (--opts data.root=/path), use "
                        "the demo config (-c demo), or set data.synthetic=true")
    if d["demo"]:
        ensure_demo_dataset(d["root"], train_per_class=d["demo_train_per_class"],
                            val_per_class=d["demo_val_per_class"], size=d["demo_image_size"])
    return d["root"]


def build_datasets(cfg):
    """``(train_set, val_set)``; raises :class:`DataError` for missing/empty folders or a class count that
    differs from ``model.num_classes``, before any training."""
    d, m = cfg["data"], cfg["model"]
    if d["synthetic"]:
        return SyntheticDataset(d["synthetic_size"], tuple(m["img_size"]), m["num_classes"], seed=1), \
            build_val_dataset(cfg)
    root = data_root(cfg)
    train = SafeImageFolder(os.path.join(root, d["train_split"]), build_transforms(cfg, True), seed=cfg["train"]["seed"])
    _check_classes(train, m["num_classes"], "training")
    val = build_val_dataset(cfg)
    if val.classes != train.classes:
        raise DataError(f"the class folders of {val.root} ({len(val.classes)}) differ from those of {train.root} "
                        f"({len(train.classes)}); both splits need the same class sub-folders")
    return train, val


def build_val_dataset(cfg):
    """The validation split alone (``data.root/data.val_split``, eval transform): what evaluation needs, no
    training split required. Raises :class:`DataError` for a missing/empty folder or a class count that
    differs from ``model.num_classes``."""
    d, m = cfg["data"], cfg["model"]
    if d["synthetic"]:
        return SyntheticDataset(max(d["synthetic_size"] // 4, 1), tuple(m["img_size"]), m["num_classes"], seed=2)
    val = SafeImageFolder(os.path.join(data_root(cfg), d["val_split"]), build_transforms(cfg, False))
    _check_classes(val, m["num_classes"], "validation")
    return val


def _check_classes(dataset, num_classes, split):
    if len(dataset.classes) != num_classes:
        raise DataError(f"the {split} set {dataset.root} has {len(dataset.classes)} classes but model.num_classes is "
                        f"{num_classes}; set --opts model.num_classes={len(dataset.classes)}")


def local_batch_size(cfg, world):
    """Images per rank and micro-step: ``train.batch_size / grad_accum_steps / world``; raises ValueError when
    the global batch does not divide evenly (:class:`DataError`)."""
    t = cfg["train"]
    per_step = t["batch_size"] // t["grad_accum_steps"]
    if per_step % world:
        raise DataError(f"train.batch_size {t['batch_size']} (/ grad_accum_steps {t['grad_accum_steps']}) is not "
                         f"divisible by the {world} data-parallel ranks; use a multiple of {world * t['grad_accum_steps']}")
    return per_step // world


def _ignore_signals(signums, worker_id):
    """A loader worker's ``worker_init_fn``: ignore these signals (SIGINT stays: it is the workers' parent-death
    signal)."""
    for s in signums:
        if s != signal.SIGINT:
            signal.signal(s, signal.SIG_IGN)


def _loader(cfg, dataset, batch, sampler):
    workers = cfg["data"]["num_workers"]
    stop_signals = resolve_signals(cfg["train"].get("stop_signals", ()))
    init = functools.partial(_ignore_signals, stop_signals) if workers else None
    return flow.utils.data.DataLoader(dataset, batch_size=batch, sampler=sampler, drop_last=sampler.drop_last,
                                      num_workers=workers, persistent_workers=False, worker_init_fn=init)


def build_train_loader(cfg, dataset, rank=0, world=1):
    """``(loader, sampler)`` over this rank's shard of the shuffled epoch; call ``sampler.set_epoch(epoch,
    consumed)`` (and ``dataset.set_epoch(epoch)``) before iterating. Full batches only (drop_last)."""
    batch = local_batch_size(cfg, world)
    if batch % 2 and build_mixup(cfg) is not None:
        t = cfg["train"]
        raise DataError(f"Mixup/CutMix needs an even batch per rank, but train.batch_size {t['batch_size']} / "
                         f"grad_accum_steps {t['grad_accum_steps']} / {world} rank(s) = {batch}; use a multiple of "
                         f"{2 * world * t['grad_accum_steps']} or set aug.mixup=0 aug.cutmix=0")
    sampler = ResumableDistributedSampler(len(dataset), rank, world, batch, shuffle=True, drop_last=True,
                                          seed=cfg["train"]["seed"])
    return _loader(cfg, dataset, batch, sampler), sampler


def build_val_loader(cfg, dataset, rank=0, world=1):
    """A loader over this rank's shard of ``dataset`` padded to whole global batches; yields ``(x, y, valid)``."""
    batch = local_batch_size(cfg, world)
    chunk = world * batch
    padded = PaddedDataset(dataset, -(-len(dataset) // chunk) * chunk)
    sampler = ResumableDistributedSampler(len(padded), rank, world, batch, shuffle=False, drop_last=False)
    return _loader(cfg, padded, batch, sampler)
