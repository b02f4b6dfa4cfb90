"""Train/val data loaders from a config: flowvision timm-style transforms, sharded sampling, Mixup/CutMix."""
import os

import oneflow as flow
from flowvision.data import Mixup, create_transform
from flowvision.loss.cross_entropy import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from .dataset import PaddedDataset, SafeImageFolder, SyntheticDataset
from .demo import ensure_demo_dataset
from .sampler import ResumableDistributedSampler


def build_transforms(cfg, train):
    """flowvision's ``create_transform`` with the config's recipe (RandAugment string, jitter, crop_pct...)."""
    a, img = cfg["aug"], tuple(cfg["model"]["img_size"])
    if train:
        return create_transform(img, is_training=True, scale=tuple(a["scale"]), ratio=tuple(a["ratio"]),
                                hflip=a["hflip"], color_jitter=a["color_jitter"] or None,
                                auto_augment=a["auto_augment"] or None, interpolation=a["train_interpolation"],
                                mean=tuple(a["mean"]), std=tuple(a["std"]), re_prob=a["reprob"],
                                re_mode=a["remode"], re_count=a["recount"])
    return create_transform(img, is_training=False, interpolation=a["interpolation"], mean=tuple(a["mean"]),
                            std=tuple(a["std"]), crop_pct=a["crop_pct"])


def data_root(cfg):
    d = cfg["data"]
    if d["root"] is None:
        raise ValueError("data.root is not set; give an ImageFolder root (--opts data.root=/path) or set "
                         "data.synthetic: true")
    if d["demo"]:
        ensure_demo_dataset(d["root"])
    return d["root"]


def build_datasets(cfg):
    """``(train_set, val_set)``; raises DataError/ValueError for missing or empty folders, before training."""
    d, m = cfg["data"], cfg["model"]
    if d["synthetic"]:
        return (SyntheticDataset(d["synthetic_size"], tuple(m["img_size"]), m["num_classes"], seed=1),
                SyntheticDataset(max(d["synthetic_size"] // 4, 1), tuple(m["img_size"]), m["num_classes"], seed=2))
    root = data_root(cfg)
    train = SafeImageFolder(os.path.join(root, d["train_split"]), build_transforms(cfg, True), seed=cfg["train"]["seed"])
    val = SafeImageFolder(os.path.join(root, d["val_split"]), build_transforms(cfg, False))
    if len(train.classes) != m["num_classes"]:
        raise ValueError(f"the training set has {len(train.classes)} classes but model.num_classes is "
                         f"{m['num_classes']}; set --opts model.num_classes={len(train.classes)}")
    return train, val


def local_batch_size(cfg, world):
    t = cfg["train"]
    per_step = t["batch_size"] // t["grad_accum_steps"]
    if per_step % world:
        raise ValueError(f"train.batch_size {t['batch_size']} (/ grad_accum_steps {t['grad_accum_steps']}) is not "
                         f"divisible by the {world} data-parallel ranks; use a multiple of {world * t['grad_accum_steps']}")
    return per_step // world


def build_train_loader(cfg, dataset, rank=0, world=1):
    batch = local_batch_size(cfg, world)
    sampler = ResumableDistributedSampler(len(dataset), rank, world, batch, shuffle=True, drop_last=True,
                                          seed=cfg["train"]["seed"])
    loader = flow.utils.data.DataLoader(dataset, batch_size=batch, sampler=sampler, drop_last=True,
                                        num_workers=cfg["data"]["num_workers"])
    return loader, sampler


def build_val_loader(cfg, dataset, rank=0, world=1):
    batch = local_batch_size(cfg, world)
    chunk = world * batch
    padded = PaddedDataset(dataset, -(-len(dataset) // chunk) * chunk)
    sampler = ResumableDistributedSampler(len(padded), rank, world, batch, shuffle=False, drop_last=False)
    return flow.utils.data.DataLoader(padded, batch_size=batch, sampler=sampler,
                                      num_workers=cfg["data"]["num_workers"])


def build_mixup(cfg):
    """flowvision Mixup/CutMix (``mode="batch"``; call it on local tensors, before ``to_global``) or None."""
    a = cfg["aug"]
    if a["mixup"] <= 0 and a["cutmix"] <= 0:
        return None
    return Mixup(mixup_alpha=a["mixup"], cutmix_alpha=a["cutmix"], prob=a["mixup_prob"],
                 switch_prob=a["mixup_switch_prob"], mode=a["mixup_mode"], label_smoothing=a["smoothing"],
                 num_classes=cfg["model"]["num_classes"])


def build_train_criterion(cfg, mixup):
    if mixup is not None:
        return SoftTargetCrossEntropy()
    if cfg["aug"]["smoothing"] > 0:
        return LabelSmoothingCrossEntropy(smoothing=cfg["aug"]["smoothing"])
    return flow.nn.CrossEntropyLoss()
