"""Data: the embedded demo set, ImageFolder with corrupt-image skipping, resumable sharded loaders, Mixup."""
from .dataset import DataError, PaddedDataset, SafeImageFolder, SyntheticDataset, check_image_folder
from .demo import CLASSES, ensure_demo_dataset
from .loader import (build_datasets, build_mixup, build_train_criterion, build_train_loader, build_transforms,
                     build_val_loader, local_batch_size)
from .sampler import ResumableDistributedSampler

__all__ = ["DataError", "PaddedDataset", "SafeImageFolder", "SyntheticDataset", "check_image_folder", "CLASSES",
           "ensure_demo_dataset", "build_datasets", "build_mixup", "build_train_criterion", "build_train_loader",
           "build_transforms", "build_val_loader", "local_batch_size", "ResumableDistributedSampler"]
