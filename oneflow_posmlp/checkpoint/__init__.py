"""Checkpoints: safetensors weights, torch-free readers for PyTorch files, a restricted reader for OneFlow
directories, weight extraction and conversion. Nothing a file contains is ever run."""
from .errors import CheckpointError, UnsafeCheckpointError
from .oneflow_reader import read_oneflow_checkpoint
from .safetensors_io import load_safetensors, save_safetensors
from .state_dict import extract_state_dict
from .torch_reader import Record, load_torch_checkpoint
from .weights import load_weights, save_weights

__all__ = ["CheckpointError", "UnsafeCheckpointError", "load_safetensors", "save_safetensors",
           "extract_state_dict", "Record", "load_torch_checkpoint", "read_oneflow_checkpoint", "load_weights",
           "save_weights"]
