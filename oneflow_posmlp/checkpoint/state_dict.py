"""Find the model weights inside a loaded checkpoint (timm training dicts, DDP prefixes, bare dicts)."""
import collections

import numpy as np

from .errors import CheckpointError

WEIGHT_KEYS = ("state_dict", "model", "module", "model_state")


def _is_state_dict(obj):
    return isinstance(obj, dict) and obj and all(isinstance(v, np.ndarray) for v in obj.values())


def extract_state_dict(obj, ema=False):
    """``OrderedDict[name, np.ndarray]`` of the weights in ``obj``.

    timm checkpoints: ``state_dict`` (or ``state_dict_ema`` with ``ema=True``); also ``model`` /
    ``module`` / ``model_state`` or a bare state dict. A leading ``module.`` (DDP) is stripped.
    """
    if not isinstance(obj, dict):
        raise CheckpointError(f"the checkpoint holds a {type(obj).__name__}, not a dict of weights")
    if ema:
        if "state_dict_ema" not in obj:
            raise CheckpointError(f"--ema asked for EMA weights, but the checkpoint has no 'state_dict_ema' "
                                  f"(it has: {', '.join(map(str, obj))}); drop --ema")
        found, where = obj["state_dict_ema"], "state_dict_ema"
    elif _is_state_dict(obj):
        found, where = obj, "(bare state dict)"
    else:
        where = next((k for k in WEIGHT_KEYS if k in obj), None)
        if where is None:
            raise CheckpointError(f"no weights found in the checkpoint: expected one of "
                                  f"{', '.join(WEIGHT_KEYS)} or a bare state dict; it has: {', '.join(map(str, obj))}")
        found = obj[where]
    if not _is_state_dict(found):
        raise CheckpointError(f"checkpoint entry '{where}' is not a dict of tensors")
    out = collections.OrderedDict()
    for k, v in found.items():
        out[k[len("module."):] if k.startswith("module.") else k] = v
    return out
