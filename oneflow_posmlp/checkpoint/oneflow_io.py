"""OneFlow weight directories (``flow.save`` of a state dict with a JSON sidecar): written only on request
(``--format oneflow``), read through the restricted reader (:mod:`.oneflow_reader`), never ``flow.load``."""
import json
import os

from .atomic import atomic_path
from .errors import CheckpointError, disk_full_error
from .oneflow_reader import is_oneflow_checkpoint, read_oneflow_checkpoint
from .weights import META_NAME, with_version

__all__ = ["save_oneflow_weights", "load_oneflow_weights", "load_meta", "is_oneflow_checkpoint"]


def save_oneflow_weights(state_dict, dst, meta=None):
    """``flow.save(state_dict)`` to ``dst`` (a directory) atomically; ``meta`` goes to ``dst/posmlp_meta.json``."""
    import oneflow as flow

    try:
        with atomic_path(dst) as tmp:
            flow.save(state_dict, tmp)
            if meta is not None:
                with open(os.path.join(tmp, META_NAME), "w") as f:
                    json.dump(with_version(meta), f, indent=2, sort_keys=True, default=str)
    except OSError as err:
        full = disk_full_error(err, dst, sum(v.nelement() * v.element_size() for v in state_dict.values()))
        if full is None:
            raise
        raise full from None


def load_oneflow_weights(path):
    """The state dict (OneFlow tensors) of a OneFlow weight directory, or the ``model`` of a training checkpoint."""
    obj = read_oneflow_checkpoint(path)
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return obj


def load_meta(path):
    meta = os.path.join(str(path), META_NAME)
    if not os.path.isfile(meta):
        return None
    with open(meta) as f:
        return json.load(f)
