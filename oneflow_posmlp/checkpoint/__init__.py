"""Checkpoints: torch-free readers for PyTorch files, safetensors, and weight extraction."""
from .errors import CheckpointError, UnsafeCheckpointError
from .safetensors_io import load_safetensors, save_safetensors
from .state_dict import extract_state_dict
from .torch_reader import Record, load_torch_checkpoint

__all__ = ["CheckpointError", "UnsafeCheckpointError", "load_safetensors", "save_safetensors",
           "extract_state_dict", "Record", "load_torch_checkpoint"]
