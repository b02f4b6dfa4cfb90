"""The one way weights go into a built model: :func:`load_pretrained`, used by ``create_model(weights=)``, the
trainer's ``--init`` and ``posmlp-eval``/``posmlp-predict``/``posmlp-export-onnx --weights`` (and
:func:`load_into_model`, the strict copy it ends with, by the converter).

A source is a safetensors file, a OneFlow directory (converted weights, a training checkpoint: its model or, with
``ema``, its EMA weights) or ``{name: array}`` already read. Keys are strict: every missing, unexpected or
mismatched tensor is an error, except the classifier when the caller allows a fresh head (fine-tuning), and the
window-dependent tensors, which are carried over to the model's windows (:mod:`.transfer`). The model is read
through its ``state_dict()``, ``config`` (the resolved ``model:`` section) and ``features_only``: this module does
not import ``models/``.
"""
import json

import numpy as np

from .errors import CheckpointError
from .transfer import transfer_windows, weights_windows
from .weights import load_weights

HEAD_PREFIX = "head."
BACKBONE_DROPS = ("norm.", "head.")  # what a features_only backbone keeps of a classifier's weights: all but these
SHOWN = 3  # mismatches named in the one-line error
CONFIG_HEAD_FIX = "pass --opts model.num_classes={n}"  # the fix the config-driven tools (eval, predict, export) take
# model-config keys that may differ between the weights and the model: they change no tensor, or the loader
# handles them (classifier: the head rule; windows and image size: the transfer)
FREE_KEYS = ("name", "drop_rate", "drop_path_rate", "num_classes", "win_size", "img_size")


def check_keys(expected, given, allow_head_mismatch=False):
    """Compare ``{name: shape}`` maps. Returns ``(problems, dropped)``: human-readable problem lines and the
    head keys dropped under ``allow_head_mismatch``."""
    dropped = []
    problems = []
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    mismatched = [k for k in expected if k in given and tuple(expected[k]) != tuple(given[k])]
    if allow_head_mismatch:
        dropped = [k for k in mismatched + unexpected if k.startswith(HEAD_PREFIX)]
        mismatched = [k for k in mismatched if k not in dropped]
        unexpected = [k for k in unexpected if k not in dropped]
        missing_head = [k for k in missing if k.startswith(HEAD_PREFIX)]
        missing = [k for k in missing if k not in missing_head]
        dropped += [k for k in missing_head if k not in dropped]
    for k in missing:
        problems.append(f"missing in checkpoint: {k} (model expects {list(expected[k])})")
    for k in unexpected:
        problems.append(f"unexpected in checkpoint: {k} {list(given[k])}")
    for k in mismatched:
        problems.append(f"shape mismatch: {k}: checkpoint {list(given[k])}, model {list(expected[k])}")
    return problems, dropped


def _shapes(model, state):
    return ({k: tuple(v.shape) for k, v in model.state_dict().items()}, {k: tuple(np.shape(v)) for k, v in state.items()})


def load_into_model(model, state, allow_head_mismatch=False):
    """Copy numpy ``state`` into ``model`` tensor by tensor (entries are released as they are copied); returns the
    head keys dropped under ``allow_head_mismatch``.

    Raises :class:`CheckpointError` listing every missing, unexpected and mismatched key; a classifier that does
    not fit names ``--allow-head-mismatch``, which fine-tunes with a fresh one."""
    import oneflow as flow

    target = model.state_dict()
    problems, dropped = check_keys(*_shapes(model, state), allow_head_mismatch)
    if problems:
        hint = "" if allow_head_mismatch or not _head_problem(problems) else \
            "; to fine-tune with another classifier pass --allow-head-mismatch"
        hint += _windows_hint(model, state)
        raise CheckpointError(f"the checkpoint does not fit the model ({len(problems)} problems{hint}):\n  "
                              + "\n  ".join(problems))
    with flow.no_grad():
        for key in list(state):
            value = state.pop(key)
            if key in dropped:
                continue
            tensor = target[key]
            src = flow.tensor(np.array(value, dtype=np.dtype(str(tensor.dtype).replace("oneflow.", ""))))
            tensor.copy_(src)
            del value, src
    return dropped


def _head_problem(problems):
    return any(p.split(": ", 1)[-1].startswith(HEAD_PREFIX) for p in problems)


def _windows_hint(model, state):
    """Where the weights' windows differ from the model's: the loaders that carry them over (:func:`load_pretrained`)."""
    have = weights_windows(state)
    want = list(getattr(model, "config", {}).get("win_size", []))
    if not have or all(have.get(i, w) == w for i, w in enumerate(want)):
        return ""
    return (f"; the weights have windows {[have.get(i) for i in range(len(want))]}, the model {want}: "
            f"create_model(weights=), train --init and eval/predict/export --weights carry weights over to other "
            f"windows (docs/model.md, 'Fine-tune at another resolution')")


def _plain(value):
    return json.loads(json.dumps(value))  # tuples as lists, as the metadata holds them


def other_model(saved, config):
    """``(key, saved value, config value)`` of the first architecture key in which the model config stored with the
    weights (``saved``) differs from the model's (``config``), or None (keys of :data:`FREE_KEYS` aside)."""
    if not isinstance(saved, dict) or not isinstance(config, dict):
        return None
    for k in sorted(set(saved) & set(config)):
        if k not in FREE_KEYS and _plain(saved[k]) != _plain(config[k]):
            return k, saved[k], config[k]
    return None


def _misfit(model, state, meta, source, allow_head_mismatch, head_fix):
    """One :class:`CheckpointError` line for weights that do not fit ``model`` (after the window transfer), or None."""
    problems, _ = check_keys(*_shapes(model, state), allow_head_mismatch)
    if not problems:
        return None
    where = f"{source}: " if source else ""
    config = getattr(model, "config", None)
    differs = other_model((meta or {}).get("model"), config)
    if differs:
        k, saved, ours = differs
        return CheckpointError(f"{where}the checkpoint is of another model (model.{k}: checkpoint {_plain(saved)!r}, "
                               f"config {_plain(ours)!r}); use the config the weights were made with")
    head_rows = np.shape(state["head.weight"])[0] if "head.weight" in state else None
    if all(p.split(": ", 1)[-1].startswith(HEAD_PREFIX) for p in problems) and head_rows is not None \
            and not allow_head_mismatch:
        ours = (config or {}).get("num_classes")
        return CheckpointError(f"{where}the weights have a {head_rows}-class classifier, the model {ours} classes: "
                               f"{head_fix.format(n=head_rows)}")
    shown = "; ".join(problems[:SHOWN]) + ("; ..." if len(problems) > SHOWN else "")
    return CheckpointError(f"{where}the checkpoint does not fit the model ({len(problems)} problems: {shown})"
                           f"{_windows_hint(model, state)}")


def load_pretrained(model, weights, ema=False, allow_head_mismatch=False, head_fix="pass num_classes={n}", log=None,
                    source=None):
    """Load ``weights`` into the built ``model`` (in place): the one path for every entry point.

    ``weights``: a path (safetensors file, OneFlow directory) read by :func:`.load_weights` (``ema``: a training
    checkpoint's EMA weights), or ``(arrays, meta)`` already read. A ``features_only`` backbone takes a classifier's
    weights less its final norm and head. The window-dependent tensors are carried over to the model's windows
    (``log`` gets one line per kind of change; default the transfer logger at WARNING). ``allow_head_mismatch``
    leaves a classifier of another size freshly initialised (fine-tuning); without it the error names
    ``head_fix`` (formatted with ``n``, the weights' classes): each entry point names the fix it accepts.
    Weights that do not fit are one :class:`CheckpointError` line naming ``source`` (default: the path): the first
    model-config key that differs when the weights carry their config, else the count and the first mismatches.

    Returns ``(dropped head keys, transfer report, metadata)``; the report and metadata are also kept as
    ``model.weights_transfer`` and ``model.weights_meta``."""
    if isinstance(weights, tuple):
        arrays, meta = weights
    else:
        source = source or str(weights)
        arrays, meta = load_weights(weights, ema=ema)
    if getattr(model, "features_only", False):
        arrays = {k: v for k, v in arrays.items() if not k.startswith(BACKBONE_DROPS)}
    arrays, report = transfer_windows(arrays, model.config["win_size"], log=log)
    error = _misfit(model, arrays, meta, source, allow_head_mismatch, head_fix)
    if error is not None:
        raise error
    dropped = load_into_model(model, dict(arrays), allow_head_mismatch=allow_head_mismatch)
    model.weights_transfer, model.weights_meta = report, meta
    return dropped, report, meta
