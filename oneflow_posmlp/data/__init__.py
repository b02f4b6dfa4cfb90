"""Data: the embedded demo set, ImageFolder with corrupt-image skipping, flowvision transforms, resumable
sharded loaders, Mixup/CutMix. See docs/data.md."""
from .dataset import DataError, PaddedDataset, SafeImageFolder, SyntheticDataset, check_image_folder
from .demo import CLASSES, ensure_demo_dataset
from .loader import (build_datasets, build_train_loader, build_val_dataset, build_val_loader, data_root,
                     local_batch_size)
from .mixup import build_mixup, build_train_criterion
from .sampler import ResumableDistributedSampler
from .transforms import (build_eval_transform, build_train_transform, build_transforms, create_eval_transform,
                         resolve_data_config)

__all__ = ["DataError", "PaddedDataset", "SafeImageFolder", "SyntheticDataset", "check_image_folder", "CLASSES",
           "ensure_demo_dataset", "build_datasets", "build_mixup", "build_train_criterion", "build_train_loader",
           "build_transforms", "build_train_transform", "build_eval_transform", "create_eval_transform",
           "resolve_data_config", "build_val_dataset", "build_val_loader", "data_root",
           "local_batch_size", "ResumableDistributedSampler"]
