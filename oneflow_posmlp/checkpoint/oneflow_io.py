"""OneFlow weight files: ``flow.save`` directories of a state dict, written atomically, with a JSON sidecar."""
import json
import os

from .atomic import atomic_path
from .errors import CheckpointError

META_NAME = "posmlp_meta.json"


def save_oneflow_weights(state_dict, dst, meta=None):
    """``flow.save(state_dict)`` to ``dst`` (a directory) atomically; ``meta`` goes to ``dst/posmlp_meta.json``."""
    import oneflow as flow

    with atomic_path(dst) as tmp:
        flow.save(state_dict, tmp)
        if meta is not None:
            with open(os.path.join(tmp, META_NAME), "w") as f:
                json.dump(meta, f, indent=2, sort_keys=True, default=str)


def is_oneflow_checkpoint(path):
    return os.path.isdir(str(path)) and os.path.isfile(os.path.join(str(path), "pickled_data"))


def load_oneflow_weights(path):
    """The state dict saved by :func:`save_oneflow_weights` (or any ``flow.save`` of a state dict).

    Training checkpoints (``{"model": state_dict, ...}``) are accepted too: their ``model`` entry is returned.
    """
    import oneflow as flow

    path = str(path)
    if not is_oneflow_checkpoint(path):
        raise CheckpointError(f"{path}: not a OneFlow checkpoint (a flow.save directory with 'pickled_data'); "
                              f"convert PyTorch files first with tools/convert_torch_weights.py")
    try:
        obj = flow.load(path)
    except Exception as err:  # flow.load raises assorted errors for damaged directories
        raise CheckpointError(f"{path}: cannot load the OneFlow checkpoint ({type(err).__name__}: {err}); "
                              f"it is incomplete or corrupt") from None
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
