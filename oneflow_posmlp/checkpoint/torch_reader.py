"""Read PyTorch checkpoints without PyTorch, and without running anything the file contains.

Formats: the zip format of ``torch.save`` (PyTorch >= 1.6) and the legacy pickle format. Tensors come
back as numpy arrays (bfloat16 widened to float32, numpy having no bfloat16); containers are rebuilt.
The unpickler is restricted: it knows the handful of PyTorch globals that rebuild tensors and storages,
``collections.OrderedDict``, ``argparse.Namespace`` (rebuilt as a plain :class:`Record`), sets and
latin-1 bytes; any other global is refused with :class:`UnsafeCheckpointError` naming it. A refused
global is never imported, so a hostile ``__reduce__`` (``os.system`` ...) cannot run.
"""
import collections
import io
import pickle
import struct
import types
import zipfile

import numpy as np

from .errors import CheckpointError, UnsafeCheckpointError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

# storage class name -> (numpy dtype on disk, bytes per element)
STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"), "DoubleStorage": np.dtype("<f8"), "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"), "LongStorage": np.dtype("<i8"), "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"), "CharStorage": np.dtype("i1"), "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class Record(types.SimpleNamespace):
    """A plain attribute record standing in for ``argparse.Namespace``."""


class _StorageType:
    def __init__(self, name):
        self.name = name
        self.dtype = STORAGE_DTYPES[name]


class _Storage:
    """A flat typed buffer; its data arrive at once (zip) or after the main pickle (legacy)."""

    def __init__(self, storage_type, numel, key):
        self.type, self.numel, self.key = storage_type, numel, key
        self.data = None  # 1-D numpy array once read


def _count(value, what):
    """``value`` as a count (an int >= 0), else CheckpointError naming ``what``."""
    if type(value) is not int or value < 0:  # (bool is no count either)
        raise CheckpointError(f"malformed checkpoint: {what} is {value!r:.40}, not a count")
    return value


class _TensorRef:
    """A tensor to materialise once its storage holds data. Its offset, shape and strides come from the
    pickle: each is checked to be a count, and the elements it spans to lie inside its storage."""

    def __init__(self, storage, offset, size, stride):
        if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)) or len(size) != len(stride):
            raise CheckpointError(f"malformed checkpoint: a tensor's shape {size!r:.60} and strides {stride!r:.60} "
                                  f"do not match")
        self.storage, self.offset = storage, _count(offset, "a tensor's storage offset")
        self.size = tuple(_count(v, "a tensor dimension") for v in size)
        self.stride = tuple(_count(v, "a tensor stride") for v in stride)

    def materialize(self):
        data = self.storage.data
        if data is None:
            raise CheckpointError(f"storage '{self.storage.key}' has no data: the checkpoint is truncated or "
                                  f"corrupt; re-download or re-export it")
        count = 1
        for s in self.size:  # Python ints: no overflow
            count *= s
        if count == 0:
            if len(self.size) > 64 or max(self.size) > data.shape[0] + 1:
                raise CheckpointError(f"malformed checkpoint: an empty tensor of shape {self.size!r:.80}")
            arr = np.zeros(self.size, data.dtype)
        else:
            last = self.offset + sum((s - 1) * st for s, st in zip(self.size, self.stride))
            if last >= data.shape[0] or count > data.shape[0] or len(self.size) > 64:
                raise CheckpointError(f"tensor of shape {self.size!r:.80} (offset {self.offset}) reaches past the end "
                                      f"of storage '{self.storage.key}' ({data.shape[0]} elements) or holds more "
                                      f"elements than it: the checkpoint is corrupt")
            strides = [st * data.itemsize for st in self.stride]
            arr = np.lib.stride_tricks.as_strided(data[self.offset:], self.size, strides, writeable=False)
            arr = np.ascontiguousarray(arr).reshape(self.size)  # copies only non-contiguous tensors
        if self.storage.type.name == "BFloat16Storage":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        return arr


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, _Storage):
        raise CheckpointError("malformed checkpoint: a tensor is not backed by a storage record")
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *extra):
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    return func(*args)


def _codecs_encode(text, encoding="utf-8", errors="strict"):
    if encoding not in ("latin1", "latin-1"):
        raise UnsafeCheckpointError(f"refusing _codecs.encode with encoding {encoding!r} in checkpoint")
    return text.encode("latin1")


_TENSOR_MARKER = object()

_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): _TENSOR_MARKER,
    ("torch.nn.parameter", "Parameter"): _TENSOR_MARKER,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("argparse", "Namespace"): Record,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("_codecs", "encode"): _codecs_encode,
    ("__builtin__", "set"): set,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, storage_loader):
        super().__init__(file, encoding="utf-8")
        self._storage_loader = storage_loader

    def find_class(self, module, name):
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"refusing to load global '{module}.{name}' from the checkpoint: only tensors and plain "
                f"containers are allowed (nothing in the file was executed). If you trust the file, load it "
                f"with PyTorch and save its state_dict as safetensors") from None

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] not in ("storage", b"storage"):
            raise CheckpointError(f"unsupported persistent record {pid!r:.80} in the checkpoint")
        return self._storage_loader(pid[1:])


def _unpickle(fileobj, storage_loader):
    try:
        return _RestrictedUnpickler(fileobj, storage_loader).load()
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError, KeyError,
            struct.error, OverflowError, MemoryError, RecursionError, UnicodeDecodeError) as err:
        raise CheckpointError(f"the checkpoint's pickle is truncated or corrupt ({type(err).__name__}: {err}); "
                              f"re-download or re-export it") from None


def _materialize(obj):
    """Replace tensor placeholders by numpy arrays, recursively through containers."""
    if isinstance(obj, _TensorRef):
        return obj.materialize()
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, _materialize(v)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _materialize(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_materialize(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialize(v) for v in obj)
    if isinstance(obj, Record):
        return Record(**{k: _materialize(v) for k, v in vars(obj).items()})
    return obj


def _storage_type(value):
    if not isinstance(value, _StorageType):
        raise CheckpointError(f"unsupported storage type {value!r:.80} in the checkpoint")
    return value


def _load_zip(path):
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as err:
        raise CheckpointError(f"{path}: truncated or corrupt zip checkpoint ({err}); re-download or re-export it") \
            from None
    with zf:
        pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pkl:
            raise CheckpointError(f"{path}: a zip file without data.pkl is not a PyTorch checkpoint")
        prefix = pkl[0][: -len("data.pkl")]
        storages = {}

        def load_storage(record):
            stype, key, _location, numel = record[:4]
            key = str(key)
            if key not in storages:
                stype, numel = _storage_type(stype), _count(numel, f"the element count of storage '{key}'")
                name = f"{prefix}data/{key}"
                try:
                    size = zf.getinfo(name).file_size
                except KeyError:
                    raise CheckpointError(f"{path}: storage record '{name}' is missing from the zip; the "
                                          f"checkpoint is incomplete, re-download or re-export it") from None
                nbytes = numel * stype.dtype.itemsize
                if nbytes > size:  # checked before reading: the pickle's count is not trusted
                    raise CheckpointError(f"{path}: storage record '{name}' holds {size} bytes, fewer than "
                                          f"its {numel} elements need; the checkpoint is corrupt")
                try:
                    with zf.open(name) as data:
                        raw = data.read(nbytes)
                except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError) as err:
                    raise CheckpointError(f"{path}: storage record '{name}' is corrupt ({err})") from None
                storage = _Storage(stype, numel, key)
                if len(raw) < nbytes:
                    raise CheckpointError(f"{path}: storage record '{name}' holds {len(raw)} bytes, fewer than "
                                          f"its {numel} elements need; the checkpoint is corrupt")
                storage.data = np.frombuffer(raw, dtype=stype.dtype, count=numel)
                storages[key] = storage
            return storages[key]

        try:
            with zf.open(pkl[0]) as f:
                obj = _unpickle(f, load_storage)
        except CheckpointError:  # (a ValueError)
            raise
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError) as err:
            raise CheckpointError(f"{path}: corrupt zip checkpoint ({err})") from None
        return _materialize(obj)


def _load_legacy(path):
    """The legacy format: pickles of the magic number, the protocol version and the system info, the object (its
    storages as persistent records declaring type and element count), the list of storage keys; then per key an
    8-byte element count and the raw data. Every count is checked against the one the pickle declared and the
    bytes left in the file before anything is read or allocated."""
    with open(path, "rb") as fh:
        buf = fh.read()
    f = io.BytesIO(buf)

    def plain(what):
        try:
            return _RestrictedUnpickler(f, lambda r: None).load()
        except UnsafeCheckpointError:
            raise
        except Exception:  # any other failure here means the header is not a torch header
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (no {what} where one was expected), or "
                                  f"the file is truncated") from None

    if plain("magic number") != LEGACY_MAGIC:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (wrong magic number)")
    plain("protocol version")
    plain("system info")
    storages = {}

    def load_storage(record):
        stype, key, _location, numel, view = record[:5]
        key = str(key)
        if view is not None:
            raise CheckpointError(f"{path}: legacy storage views are not supported; re-save the checkpoint "
                                  f"with torch >= 1.6")
        if key not in storages:
            stype, numel = _storage_type(stype), _count(numel, f"the element count of storage '{key}'")
            if numel * stype.dtype.itemsize > len(buf):
                raise CheckpointError(f"{path}: storage '{key}' declares {numel} elements, more than the file's "
                                      f"{len(buf)} bytes hold; the checkpoint is truncated or corrupt")
            storages[key] = _Storage(stype, numel, key)
        return storages[key]

    obj = _unpickle(f, load_storage)
    keys = plain("storage key list")
    if not isinstance(keys, (list, tuple)) or len(keys) > len(storages):
        raise CheckpointError(f"{path}: its storage key list is malformed ({type(keys).__name__} of "
                              f"{len(keys) if isinstance(keys, (list, tuple)) else '?'} for {len(storages)} "
                              f"storages); the checkpoint is corrupt")
    for key in keys:
        storage = storages.get(str(key))
        if storage is None or storage.data is not None:
            raise CheckpointError(f"{path}: storage '{key!s:.40}' is listed but never used, or listed twice; the "
                                  f"checkpoint is corrupt")
        header = f.read(8)
        if len(header) < 8:
            raise CheckpointError(f"{path}: truncated: storage '{key}' is missing; re-download or re-export it")
        numel = struct.unpack("<q", header)[0]
        nbytes, left = storage.numel * storage.type.dtype.itemsize, len(buf) - f.tell()
        if numel != storage.numel or nbytes > left:
            raise CheckpointError(f"{path}: truncated or corrupt: storage '{key}' declares {numel} elements in the "
                                  f"file and {storage.numel} in the pickle, and {left} bytes are left for its "
                                  f"{nbytes}; re-download or re-export it")
        storage.data = np.frombuffer(buf, dtype=storage.type.dtype, count=storage.numel, offset=f.tell())
        f.seek(nbytes, io.SEEK_CUR)
    return _materialize(obj)


def load_torch_checkpoint(path):
    """Everything ``torch.load(path)`` would return, with tensors as numpy arrays; nothing executed.

    Raises :class:`CheckpointError` for a truncated/corrupt/non-checkpoint file and
    :class:`UnsafeCheckpointError` for a pickle asking for anything beyond tensors and containers.
    """
    path = str(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"PK" or zipfile.is_zipfile(path):
        return _load_zip(path)
    return _load_legacy(path)
