"""Checkpoints: safetensors weights, torch-free readers for PyTorch files, a restricted reader for OneFlow
directories, weight extraction, the window transfer and the one loader of weights into a built model
(:func:`load_pretrained`). Nothing a file contains is ever run. Conversion, which builds models, is
:mod:`oneflow_posmlp.conversion` (above this package and ``models/``)."""
from .errors import CheckpointError, UnsafeCheckpointError
from .load import load_into_model, load_pretrained
from .oneflow_reader import read_oneflow_checkpoint
from .safetensors_io import load_safetensors, save_safetensors
from .state_dict import extract_state_dict
from .torch_reader import Record, load_torch_checkpoint
from .weights import load_weights, save_weights

__all__ = ["CheckpointError", "UnsafeCheckpointError", "load_safetensors", "save_safetensors",
           "extract_state_dict", "Record", "load_torch_checkpoint", "read_oneflow_checkpoint", "load_weights",
           "save_weights", "load_into_model", "load_pretrained"]
