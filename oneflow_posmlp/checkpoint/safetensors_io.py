"""Read and write the safetensors format with numpy (no ``safetensors`` package needed).

Layout: 8-byte little-endian header length, a JSON header ``{name: {dtype, shape, data_offsets}}``
(plus optional ``__metadata__`` of strings), then the raw little-endian tensor bytes. Each tensor is
read into its own array, so a consumer that drops arrays as it goes (the converter) holds one copy at most.
"""
import collections
import json
import os
import struct

import numpy as np

from .errors import CheckpointError, disk_full_error

DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
          "I8": "i1", "U8": "u1", "BOOL": "?"}
NAMES = {np.dtype(v): k for k, v in DTYPES.items() if k != "BF16"}
MAX_HEADER = 100 * 1024 * 1024


def is_safetensors(path):
    """A file that starts like safetensors: a header length that fits the file, then a JSON object."""
    path = str(path)
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    n = struct.unpack("<Q", head[:8])[0]
    return head[8:9] == b"{" and 0 < n <= os.path.getsize(path) - 8


def _entries(path, header, data_len):
    """``[(name, dtype name, shape, start, end)]`` sorted by offset, every entry checked against the file:
    a known dtype, non-negative dimensions, a byte range inside the data whose size fits the shape, and no
    two tensors sharing bytes. Nothing is allocated before all entries pass."""
    entries = []
    for name, info in header.items():
        try:
            if not isinstance(info, dict):
                raise TypeError
            dtype = np.dtype(DTYPES[info["dtype"]])
            shape = tuple(int(s) for s in info["shape"])
            start, end = (int(v) for v in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: tensor '{name}' has an unsupported or malformed header entry "
                                  f"{info!r:.120} (dtypes: {', '.join(DTYPES)})") from None
        count = 1
        for s in shape:  # Python integers: a lying shape cannot overflow into a small count
            count *= s
        if min(shape, default=0) < 0 or not 0 <= start <= end <= data_len or end - start != count * dtype.itemsize:
            raise CheckpointError(f"{path}: tensor '{name}' ({info['dtype']} {list(shape)}, bytes {start}..{end}) lies "
                                  f"outside the file's {data_len} data bytes or has the wrong byte size; the file is "
                                  f"truncated or corrupt")
        entries.append((name, info["dtype"], shape, start, end))
    entries.sort(key=lambda e: (e[3], e[4]))
    for prev, cur in zip(entries, entries[1:]):
        if cur[3] < prev[4]:
            raise CheckpointError(f"{path}: tensors '{prev[0]}' and '{cur[0]}' overlap (bytes {prev[3]}..{prev[4]} "
                                  f"and {cur[3]}..{cur[4]}); the file is corrupt")
    return entries


def load_safetensors(path, with_metadata=False):
    """``OrderedDict[name, np.ndarray]`` (bfloat16 widened to float32), in file order."""
    path = str(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: too short to be a safetensors file")
        n = struct.unpack("<Q", head)[0]
        if n > min(size - 8, MAX_HEADER):
            raise CheckpointError(f"{path}: not a safetensors file, or truncated (header length {n} for a "
                                  f"{size}-byte file)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            raise CheckpointError(f"{path}: corrupt safetensors header ({err})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: corrupt safetensors header (__metadata__ must map names to strings)")
    out = collections.OrderedDict()
    for name, dtype_name, shape, start, end in _entries(path, header, size - 8 - n):
        dtype = np.dtype(DTYPES[dtype_name])
        count = (end - start) // dtype.itemsize
        arr = np.fromfile(path, dtype=dtype, count=count, offset=8 + n + start).reshape(shape)
        if dtype_name == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        out[name] = arr
    return (out, metadata) if with_metadata else out


def save_safetensors(tensors, path, metadata=None):
    """Write ``{name: np.ndarray}`` to ``path`` (written to ``path + '.tmp'``, then renamed). A full disk is a
    :class:`CheckpointError` naming the path and the size needed; an existing ``path`` is then unchanged."""
    path = str(path)
    header, offset = {}, 0
    arrays = []
    for name, arr in tensors.items():
        arr = np.array(arr, copy=False, order="C")  # (ascontiguousarray would turn 0-d into 1-d)
        if arr.dtype not in NAMES:
            raise CheckpointError(f"cannot write tensor '{name}' of dtype {arr.dtype} to safetensors")
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        header[name] = {"dtype": NAMES[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
        arrays.append(arr)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # align the data to 8 bytes
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for arr in arrays:
                f.write(arr.reshape(-1).view(np.uint8))  # the array's own bytes, no copy
        os.replace(tmp, path)
    except OSError as err:
        full = disk_full_error(err, path, 8 + len(blob) + offset)
        if full is None:
            raise
        raise full from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
