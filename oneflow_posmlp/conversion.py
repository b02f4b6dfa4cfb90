"""Convert official PosMLP checkpoints (PyTorch) to OneFlow weights and back, checking every key and shape.

Sits above ``checkpoint/`` (the readers and the loader) and ``models/`` (conversion builds the model).

PyTorch -> OneFlow: read the file without PyTorch (:mod:`.checkpoint.torch_reader`, :mod:`.checkpoint.safetensors_io`),
pick the weights (:func:`.checkpoint.extract_state_dict`), find the architecture, check keys and shapes against the
OneFlow model, copy tensor by tensor into it (at most about two copies of the weights in memory), save as
safetensors with the metadata in the header (or, on request, a OneFlow directory).
OneFlow directory -> safetensors: a flat file the official PyTorch model loads with ``strict=True``.
"""
import collections
import hashlib
import os

import numpy as np

from .checkpoint.errors import CheckpointError
from .checkpoint.load import load_into_model
from .checkpoint.oneflow_io import is_oneflow_checkpoint, save_oneflow_weights
from .checkpoint.safetensors_io import is_safetensors, load_safetensors
from .checkpoint.state_dict import extract_state_dict
from .checkpoint.torch_reader import Record, load_torch_checkpoint
from .checkpoint.weights import decode_metadata, load_weights, save_weights

FORMATS = ("safetensors", "oneflow")

def sha256_of(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def read_source(path, ema=False):
    """``(state_dict of numpy arrays, checkpoint args or None, format name, which weights, class names or None)``.

    A safetensors file written by this project carries its model config and class names in the metadata."""
    path = str(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"--src {path}: no such file")
    if is_safetensors(path):
        if ema:
            raise CheckpointError(f"--ema: {path} is a safetensors file, which holds one set of weights; drop --ema")
        state, meta = load_safetensors(path, with_metadata=True)
        meta = decode_metadata(meta, path)
        args = {"model_hyper": meta["model"]} if isinstance(meta.get("model"), dict) else None
        return state, args, "safetensors", "(flat safetensors)", meta.get("classes")
    obj = load_torch_checkpoint(path)
    state = extract_state_dict(obj, ema=ema)
    which = "state_dict_ema" if ema else next((k for k in ("state_dict", "model", "module", "model_state")
                                              if isinstance(obj, dict) and k in obj), "(bare state dict)")
    args = obj.get("args") if isinstance(obj, dict) else None
    fmt = "torch zip" if _is_zip(path) else "torch legacy"
    return state, args, fmt, which, None


def _is_zip(path):
    with open(path, "rb") as f:
        return f.read(2) == b"PK"


def model_config_from_args(args):
    """The ``model:`` section from a timm checkpoint's ``args`` (``model_hyper``), or None."""
    hyper = getattr(args, "model_hyper", None) if isinstance(args, Record) else (
        args.get("model_hyper") if isinstance(args, dict) else None)
    if not isinstance(hyper, dict):
        return None
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in hyper.items()}
    num_classes = getattr(args, "num_classes", None) if isinstance(args, Record) else None
    if num_classes is not None and "num_classes" not in cfg:
        cfg["num_classes"] = num_classes
    cfg.pop("pretrained", None)
    return cfg


def convert_torch_to_oneflow(src, dst, model_cfg=None, model_source=None, ema=False, allow_head_mismatch=False,
                             dtype="float32", log=print, out_format="safetensors"):
    """Convert ``src`` (torch zip/legacy or safetensors) to OneFlow weights at ``dst``: a safetensors file
    (``out_format="safetensors"``, the metadata in its header) or a OneFlow directory (``"oneflow"``).

    ``model_cfg``: a config ``model:`` section (from --model/--config); when None, the checkpoint's
    ``args.model_hyper`` is used. Returns ``(model, meta)``.
    """
    from .models import build_model, resolve_model_config  # (OneFlow: not at import, so --help stays quick)

    if out_format not in FORMATS:
        raise CheckpointError(f"--format must be one of {', '.join(FORMATS)}, got {out_format!r}")
    if dtype not in ("float32", "float16"):
        raise CheckpointError(f"--dtype must be float32 or float16, got {dtype!r}")
    state, args, fmt, which, classes = read_source(src, ema=ema)
    log(f"read {src} ({fmt}): {len(state)} tensors from {which}")
    if model_cfg is None:
        model_cfg = model_config_from_args(args)
        model_source = "the safetensors metadata" if fmt == "safetensors" else "the checkpoint's args.model_hyper"
        if model_cfg is None:
            raise CheckpointError("no architecture: the checkpoint has no args.model_hyper (nor model metadata); "
                                  "pass --model NAME or "
                                  "--config FILE.yaml (with a model: section)")
    resolved = resolve_model_config(model_cfg)
    if allow_head_mismatch and "head.weight" in state and tuple(state["head.weight"].shape)[0] != resolved["num_classes"]:
        log(f"classifier: checkpoint has {state['head.weight'].shape[0]} classes, model {resolved['num_classes']}: "
            f"the head is left freshly initialised")
    log(f"architecture from {model_source}: {describe(resolved)}")
    model = build_model(resolved)
    dropped = load_into_model(model, state, allow_head_mismatch)
    out_state = model.state_dict()
    if dtype == "float16":
        import oneflow as flow

        out_state = collections.OrderedDict(
            (k, v.to(flow.float16) if v.dtype == flow.float32 else v) for k, v in out_state.items())
    meta = {
        "source": os.path.abspath(str(src)), "source_sha256": sha256_of(src), "source_format": fmt,
        "weights": which, "model": resolved, "model_from": model_source, "dtype": dtype,
        "dropped_keys": dropped, "classes": classes,
    }
    if out_format == "oneflow":
        save_oneflow_weights(out_state, dst, meta)
    else:
        save_weights(collections.OrderedDict((k, v.numpy()) for k, v in out_state.items()), dst, meta)
    log(f"wrote {dst} ({len(out_state)} tensors, {dtype}, {out_format})")
    return model, meta


def describe(cfg):
    kind = "GQPE" if cfg["quadratic"] else "LRPE"
    if not cfg["pos_only"]:
        kind += "+gate"
    return (f"{cfg.get('name') or 'custom'} embed_dims={cfg['embed_dims']} depths={cfg['depths']} "
            f"win_size={cfg['win_size']} gamma={cfg['gamma']} {kind} num_classes={cfg['num_classes']}")


def export_oneflow_to_safetensors(src, dst, ema=False, log=print):
    """Write the weights of the OneFlow directory ``src`` (converted weights of an earlier version, or a training
    checkpoint: its model, or its EMA with ``ema``) as a flat safetensors file with the official key names.
    ``src`` is read by the restricted reader; its metadata (model config, class names) go into the header."""
    if not is_oneflow_checkpoint(src):
        raise CheckpointError(f"--src {src}: not a OneFlow checkpoint directory")
    arrays, meta = load_weights(src, ema=ema)
    meta = dict(meta)
    if "source_sha256" in meta:  # converted weights: keep where they came from
        meta["origin"], meta["origin_sha256"] = meta.pop("source", None), meta.pop("source_sha256")
    meta.update(source=os.path.abspath(str(src)), source_format="oneflow directory",
                weights="ema" if ema else meta.get("weights", "model"))
    save_weights(arrays, dst, meta)
    log(f"wrote {dst} ({len(arrays)} tensors, safetensors)")


# --verify: the outputs a reference npz may hold (``logits_eval`` is required), and the model output each one is
VERIFY_OUTPUTS = ("logits_eval", "features_eval")
VERIFY_RTOL, VERIFY_ATOL = 1e-4, 1e-6


class OutputCheck(collections.namedtuple("OutputCheck", "name max_diff max_ref allowed rtol atol")):
    """One output compared by :func:`verify`: ``max|ours - ref|`` and its allowance ``rtol * max|ref| + atol``."""

    @property
    def ok(self):
        return bool(self.max_diff <= self.allowed)  # False for NaN

    def __str__(self):
        return (f"{self.name}: max abs diff {self.max_diff:.3e} (allowed {self.allowed:.3e} = {self.rtol:g} x "
                f"max|ref| {self.max_ref:.3g} + {self.atol:g})")


class VerificationError(CheckpointError):
    """The converted model's outputs differ from the reference's; ``checks`` holds every :class:`OutputCheck`."""

    def __init__(self, message, checks):
        super().__init__(message)
        self.checks = checks


def verify(model, reference_npz, rtol=VERIFY_RTOL, atol=VERIFY_ATOL):
    """Compare ``model`` in eval mode on the npz's ``input`` with every output the npz holds: ``logits_eval``
    (required) and ``features_eval`` (``forward_features``, when present), each within ``rtol * max|ref| + atol``
    (the tolerance scales with the outputs; ``atol`` is a floor for outputs near zero).

    Returns the list of :class:`OutputCheck`. Raises :class:`VerificationError` naming every output outside its
    tolerance and by how much (NaN outputs fail), :class:`CheckpointError` for an unusable npz."""
    import oneflow as flow

    try:
        ref = np.load(reference_npz)
        x, expected = ref["input"], {k: ref[k] for k in VERIFY_OUTPUTS if k in ref.files or k == "logits_eval"}
    except (OSError, KeyError, ValueError) as err:
        raise CheckpointError(f"--verify {reference_npz}: needs an npz with 'input' and 'logits_eval' ({err})") \
            from None
    model.eval()
    with flow.no_grad():
        feats = model.forward_features(flow.tensor(x))
        got = {"logits_eval": model.forward_head(feats).numpy(), "features_eval": feats.numpy()}
    checks = []
    for name, want in expected.items():
        if got[name].shape != want.shape:
            raise CheckpointError(f"--verify {reference_npz}: the model gives {name} of shape {got[name].shape}, "
                                  f"the reference holds {want.shape}")
        max_ref = float(np.abs(want).max())
        checks.append(OutputCheck(name, float(np.abs(got[name] - want).max()), max_ref, rtol * max_ref + atol,
                                  rtol, atol))
    failed = [c for c in checks if not c.ok]
    if failed:
        raise VerificationError(f"--verify {reference_npz}: the converted model differs from the reference: "
                                + "; ".join(f"{c.name} by {c.max_diff:.3e} (max abs), above the allowed {c.allowed:.3e} "
                                            f"= {c.rtol:g} x max|ref| {c.max_ref:.3g} + {c.atol:g}" for c in failed),
                                checks)
    return checks
