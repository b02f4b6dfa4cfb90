"""Read ``flow.save`` directories without ``flow.load``, and without running anything the pickle contains.

A ``flow.save`` directory holds ``pickled_data`` (``{"protocol_version": 1, "data": obj}``) and one
sub-directory per tensor (``out``: raw bytes, ``meta``: shape and dtype as protobuf text). ``flow.load``
unpickles ``pickled_data`` with :mod:`pickle`, so a hostile directory runs code. This reader's unpickler
knows only what ``flow.save`` writes for this project's weights and training checkpoints:

* ``oneflow.Tensor`` / ``oneflow.nn.Parameter``: rebuilt as a placeholder whose state may only be
  ``{"path": NAME}``, NAME a sub-directory of the checkpoint; its data are read with numpy afterwards;
* numpy arrays of numbers (NumPy's RNG state): ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``,
  ``numpy.dtype``, each checked;
* ``collections.OrderedDict``; dicts, lists, tuples, numbers, strings, bytes, None need no global.

Any other global is refused before it is imported, naming it (:class:`UnsafeCheckpointError`).
"""
import collections
import io
import os
import pickle
import re
import struct

import numpy as np

from .errors import CheckpointError, UnsafeCheckpointError

PICKLE_NAME = "pickled_data"
_TENSOR_DIR = re.compile(r"^[A-Za-z0-9_]+$")


def is_oneflow_checkpoint(path):
    """A ``flow.save`` directory (it holds ``pickled_data``)."""
    return os.path.isdir(str(path)) and os.path.isfile(os.path.join(str(path), PICKLE_NAME))


class _TensorRef:
    """A saved tensor: ``NAME`` of its sub-directory, filled in by ``BUILD`` (``__setstate__``)."""

    def __setstate__(self, state):
        if not isinstance(state, dict) or set(state) != {"path"} or not isinstance(state["path"], str) \
                or not _TENSOR_DIR.match(state["path"]):
            raise CheckpointError(f"a tensor record {state!r:.80} is not what flow.save writes")
        self.name = state["path"]


def _reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise UnsafeCheckpointError(f"refusing numpy array subclass {subtype!r:.80} in the checkpoint")
    return np.core.multiarray._reconstruct(np.ndarray, shape, _dtype(dtype))


def _dtype(spec, align=False, copy=True):
    dt = np.dtype(spec, bool(align), True) if isinstance(spec, (str, bytes)) else None  # a copy: BUILD sets its state
    if dt is None or dt.hasobject or dt.kind not in "biufc":
        raise UnsafeCheckpointError(f"refusing numpy dtype {spec!r:.40} in the checkpoint (numbers only)")
    return dt


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("oneflow", "Tensor"): _TensorRef,
    ("oneflow.nn", "Parameter"): _TensorRef,
    ("oneflow._oneflow_internal", "Tensor"): _TensorRef,
    ("oneflow.framework.tensor", "Tensor"): _TensorRef,
    ("oneflow.nn.parameter", "Parameter"): _TensorRef,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"refusing to load global '{module}.{name}': a OneFlow checkpoint of this project holds only "
                f"tensors and plain containers (nothing in it was run); do not use this file, or if you made it "
                f"yourself, re-create it with this version of the tools") from None

    def persistent_load(self, pid):
        raise CheckpointError(f"unsupported persistent record {pid!r:.80} in the checkpoint")


def _read_tensor(root, name):
    """The numpy array of the tensor sub-directory ``root/name`` (``meta`` protobuf text + raw ``out``)."""
    from google.protobuf import text_format
    from oneflow.core.framework import variable_meta_info_pb2
    from oneflow.framework import dtype as dtype_util

    d = os.path.join(root, name)
    try:
        with open(os.path.join(d, "meta")) as f:
            meta = text_format.Parse(f.read(), variable_meta_info_pb2.VariableMetaInfo())
        shape = tuple(int(s) for s in meta.shape.dim)
        dtype = np.dtype(dtype_util.convert_oneflow_dtype_to_numpy_dtype(
            dtype_util.convert_proto_dtype_to_oneflow_dtype(meta.data_type)))
    except (OSError, text_format.ParseError, ValueError, KeyError, TypeError, NotImplementedError) as err:
        raise CheckpointError(f"tensor '{name}': unreadable meta ({type(err).__name__}: {err})") from None
    data = os.path.join(d, "out")
    count = 1
    for s in shape:
        count *= s
    if not os.path.isfile(data) or min(shape, default=0) < 0 or os.path.getsize(data) != count * dtype.itemsize:
        raise CheckpointError(f"tensor '{name}' ({dtype} {list(shape)}): its data file is missing or has the "
                              f"wrong size")
    return np.fromfile(data, dtype=dtype, count=count).reshape(shape)


def _materialize(obj, root, tensor):
    if isinstance(obj, _TensorRef):
        if not hasattr(obj, "name"):
            raise CheckpointError("a tensor record without a path: not what flow.save writes")
        return tensor(_read_tensor(root, obj.name))
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise UnsafeCheckpointError("refusing a numpy object array in the checkpoint (numbers only)")
        return obj
    if isinstance(obj, dict):
        return type(obj)((k, _materialize(v, root, tensor)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v, root, tensor) for v in obj)
    return obj


def read_oneflow_checkpoint(path, tensor=None):
    """What ``flow.load(path)`` returns, read safely. ``tensor(np.ndarray)`` makes each saved tensor (default:
    a OneFlow tensor; pass ``lambda a: a`` for numpy arrays).

    Raises :class:`UnsafeCheckpointError` for a pickle asking for any other global and
    :class:`CheckpointError` for a directory that is not a complete ``flow.save`` output.
    """
    path = str(path)
    if tensor is None:
        import oneflow as flow

        tensor = flow.from_numpy
    if not is_oneflow_checkpoint(path):
        raise CheckpointError(f"{path}: not a OneFlow checkpoint (a flow.save directory with '{PICKLE_NAME}')")
    try:
        with open(os.path.join(path, PICKLE_NAME), "rb") as f:
            raw = _RestrictedUnpickler(io.BytesIO(f.read())).load()
        if not isinstance(raw, dict) or raw.get("protocol_version") != 1 or "data" not in raw:
            raise CheckpointError("its pickled_data is not a flow.save record")
        return _materialize(raw["data"], path, tensor)
    except UnsafeCheckpointError as err:
        raise UnsafeCheckpointError(f"{path}: {err}") from None
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}; the checkpoint is incomplete or corrupt") from None
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError, KeyError,
            struct.error, OSError, MemoryError, RecursionError, OverflowError) as err:
        raise CheckpointError(f"{path}: the checkpoint's pickle is truncated or corrupt ({type(err).__name__}: "
                              f"{err}); it is incomplete or corrupt") from None
