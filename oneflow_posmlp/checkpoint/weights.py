"""Model weights to share: safetensors files (official key names, metadata in the header), and one loader for
every weight source the project accepts.

``load_weights(path)`` reads a safetensors file (no code can be in it), or a OneFlow directory (converted
weights of earlier versions, training checkpoints) through the restricted reader of :mod:`.oneflow_reader`.
"""
import json
import os

import numpy as np

from .errors import CheckpointError
from .oneflow_reader import is_oneflow_checkpoint, read_oneflow_checkpoint
from .safetensors_io import is_safetensors, load_safetensors, save_safetensors

META_NAME = "posmlp_meta.json"  # the sidecar of OneFlow weight directories written by earlier versions
# metadata values are strings in safetensors; these hold JSON
JSON_KEYS = ("model", "dropped_keys", "classes")
VERSION_KEY = "posmlp_version"  # the version of oneflow-posmlp that wrote a file (weights, training checkpoints)


def encode_metadata(meta):
    """``{key: str}`` for a safetensors header: strings stay, ``JSON_KEYS`` are JSON, the rest ``str()``."""
    out = {"format": "pt"}  # what the safetensors / transformers loaders expect of PyTorch weights
    for k, v in meta.items():
        if v is None:
            continue
        out[k] = json.dumps(v) if k in JSON_KEYS else str(v)
    return out


def decode_metadata(meta, where=""):
    out = dict(meta)
    for k in JSON_KEYS:
        if k in out:
            try:
                out[k] = json.loads(out[k])
            except (TypeError, ValueError):
                raise CheckpointError(f"{where}: metadata '{k}' is not valid JSON ({out[k]!r:.60})") from None
    if "classes" in out and not (isinstance(out["classes"], list) and all(isinstance(c, str) for c in out["classes"])):
        raise CheckpointError(f"{where}: metadata 'classes' is not a list of class names")
    return out


def save_weights(arrays, path, meta=None):
    """``{name: np.ndarray}`` to the safetensors file ``path`` (written completely, then renamed); the header's
    metadata is ``meta`` plus ``posmlp_version``, the version that wrote it."""
    save_safetensors(arrays, path, metadata=encode_metadata(with_version(meta)))


def with_version(meta):
    """``meta`` plus ``posmlp_version``: the version of oneflow-posmlp writing it (the metadata of every file of
    weights or checkpoint it writes)."""
    from .. import __version__

    return {**(meta or {}), VERSION_KEY: __version__}


def load_weights(path, ema=False):
    """``(OrderedDict name -> np.ndarray, metadata dict)`` of model weights; nothing in the file is run.

    ``path``: a safetensors file (``tools/convert_torch_weights.py`` output), a OneFlow weight directory of an
    earlier version, or a training checkpoint directory (``OUTPUT/last``, ``OUTPUT/best``: its model, or its
    EMA weights with ``ema=True``). Metadata: what the converter recorded (``model``: the model config,
    ``source_sha256``, ``dropped_keys`` ...) and ``classes`` (class names) when the source had them.
    """
    path = str(path)
    if os.path.isfile(path):
        if not is_safetensors(path):
            raise CheckpointError(f"{path}: not a safetensors file; convert PyTorch checkpoints first with "
                                  f"tools/convert_torch_weights.py")
        if ema:
            raise CheckpointError(f"--ema: {path} is a safetensors file, which holds one set of weights; drop --ema "
                                  f"(convert with --ema to get EMA weights)")
        arrays, meta = load_safetensors(path, with_metadata=True)
        return arrays, decode_metadata(meta, path)
    if not is_oneflow_checkpoint(path):
        raise CheckpointError(f"{path}: no such weights file; pass a .safetensors file from "
                              f"tools/convert_torch_weights.py or a training checkpoint directory (OUTPUT/last)")
    obj = read_oneflow_checkpoint(path, tensor=lambda a: a)
    meta = {}
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):  # a training checkpoint
        cfg = obj.get("config")
        if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
            meta["model"] = cfg["model"]
        if obj.get("classes") is not None:
            meta["classes"] = list(obj["classes"])
        if ema:
            if obj.get("ema") is None:
                raise CheckpointError(f"--ema: {path} holds no EMA weights (trained with train.ema=false); drop --ema")
            obj = obj["ema"]
        else:
            obj = obj["model"]
    elif ema:
        raise CheckpointError(f"--ema: {path} holds converted weights, not a training checkpoint; drop --ema")
    else:
        sidecar = os.path.join(path, META_NAME)
        if os.path.isfile(sidecar):
            try:
                with open(sidecar) as f:
                    meta = json.load(f)
            except (OSError, ValueError) as err:
                raise CheckpointError(f"{sidecar}: unreadable ({err})") from None
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise CheckpointError(f"{path}: does not hold a state dict of tensors")
    return obj, meta
