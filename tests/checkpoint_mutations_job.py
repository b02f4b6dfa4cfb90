"""Run by tests/test_checkpoint_mutations.py in a process of its own: seeded byte mutations (flips, insertions,
deletions, truncations) of small files of the four weight formats the project reads (safetensors, the zip and
the legacy formats of ``torch.save``, ``flow.save`` directories), each read by its reader under an address-space
limit (what the process held + 1 GiB), so a length read from the file that asks for more fails as MemoryError
instead of swapping the machine. Prints one JSON object: per format the number of cases and how each ended
(``clean``, ``CheckpointError``, or the type and message of anything else).

    python tests/checkpoint_mutations_job.py WORK_DIR SEED CASES_PER_FORMAT

The torch files are written without PyTorch: a pickler whose globals resolve to stand-in ``torch`` modules
registered in this process only (the reader never imports them: it matches the names).
"""
import collections
import io
import json
import os
import pickle
import random
import resource
import shutil
import struct
import sys
import types
import zipfile

import numpy as np

import oneflow_posmlp  # noqa: F401  (before oneflow)
import oneflow as flow
from oneflow_posmlp.checkpoint import (CheckpointError, load_safetensors, load_torch_checkpoint,
                                       read_oneflow_checkpoint, save_safetensors)
from oneflow_posmlp.checkpoint.torch_reader import LEGACY_MAGIC

TENSORS = collections.OrderedDict([
    ("blocks.0.weight", np.arange(12, dtype=np.float32).reshape(3, 4) / 7),
    ("blocks.0.bias", np.array([1.5, -2.0, 0.25], dtype=np.float32)),
    ("norm.num_batches_tracked", np.array(3, dtype=np.int64)),
    ("head.weight", np.linspace(-1, 1, 10).astype(np.float16).reshape(2, 5)),
])
STORAGE = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage",
           np.dtype(np.float16): "HalfStorage"}


# ----------------------------------------------------------------- torch files without torch
def _stand_in_torch():
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in STORAGE.values():
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    sys.modules.setdefault("torch", torch)
    sys.modules.setdefault("torch._utils", utils)
    return sys.modules["torch"], sys.modules["torch._utils"]._rebuild_tensor_v2


class _Storage:
    def __init__(self, key, array):
        self.key, self.array = key, array


class _Tensor:
    def __init__(self, storage, rebuild):
        self.storage, self.rebuild = storage, rebuild

    def __reduce__(self):
        a = self.storage.array
        stride, acc = [], 1
        for s in reversed(a.shape):
            stride.insert(0, acc)
            acc *= s
        return self.rebuild, (self.storage, 0, tuple(a.shape), tuple(stride), False, collections.OrderedDict())


def _torch_objects():
    torch, rebuild = _stand_in_torch()
    storages = [_Storage(str(i), a) for i, a in enumerate(TENSORS.values())]
    obj = collections.OrderedDict((k, _Tensor(s, rebuild)) for k, s in zip(TENSORS, storages))
    return torch, storages, {"state_dict": obj, "epoch": 3}


def _pickler(f, torch, legacy):
    p = pickle.Pickler(f, protocol=2)

    def persistent_id(obj):
        if isinstance(obj, _Storage):
            record = ("storage", getattr(torch, STORAGE[obj.array.dtype]), obj.key, "cpu", obj.array.size)
            return record + (None,) if legacy else record
        return None

    p.persistent_id = persistent_id
    return p


def write_torch_legacy(path):
    torch, storages, obj = _torch_objects()
    with open(path, "wb") as f:
        for header in (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True,
                                            "type_sizes": {"short": 2, "int": 4, "long": 4}}):
            pickle.dump(header, f, protocol=2)
        _pickler(f, torch, legacy=True).dump(obj)
        pickle.dump([s.key for s in storages], f, protocol=2)
        for s in storages:
            f.write(struct.pack("<q", s.array.size))
            f.write(np.ascontiguousarray(s.array).tobytes())


def write_torch_zip(path):
    torch, storages, obj = _torch_objects()
    buf = io.BytesIO()
    _pickler(buf, torch, legacy=False).dump(obj)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        for s in storages:
            zf.writestr(f"archive/data/{s.key}", np.ascontiguousarray(s.array).tobytes())
        zf.writestr("archive/version", "3\n")


# ----------------------------------------------------------------- the four formats
def _arrays(obj):
    """The tensors of what a reader returned, as ``{name: array}``."""
    if "state_dict" in obj:
        obj = obj["state_dict"]
    return {k: np.asarray(v.numpy() if hasattr(v, "numpy") else v) for k, v in obj.items()}


FORMATS = {  # name: (write(path), read(path))
    "safetensors": (lambda p: save_safetensors(dict(TENSORS), p), load_safetensors),
    "torch_zip": (write_torch_zip, load_torch_checkpoint),
    "torch_legacy": (write_torch_legacy, load_torch_checkpoint),
    "oneflow_dir": (lambda p: flow.save({k: flow.tensor(v) for k, v in TENSORS.items()}, p),
                    lambda p: read_oneflow_checkpoint(p, tensor=lambda a: a)),
}


def mutate(data, rng):
    """``data`` with one seeded mutation: a flip of 1-4 bytes, an insertion or deletion of 1-8, a truncation."""
    data = bytearray(data)
    kind = rng.choice(("flip", "insert", "delete", "truncate"))
    pos = rng.randrange(max(len(data), 1))
    if kind == "flip":
        for i in range(pos, min(pos + rng.randint(1, 4), len(data))):
            data[i] ^= rng.randint(1, 255)
    elif kind == "insert":
        data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    elif kind == "delete":
        del data[pos:pos + rng.randint(1, 8)]
    else:
        del data[pos:]
    return bytes(data), kind


def _limit_memory(extra=1 << 30):
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + extra, resource.getrlimit(resource.RLIMIT_AS)[1]))


def main(work, seed, cases):
    clean = {}
    for name, (write, read) in FORMATS.items():
        path = os.path.join(work, name)
        write(path)
        got = _arrays(read(path))
        clean[name] = sorted(got) == sorted(TENSORS) and all(np.array_equal(got[k], TENSORS[k]) for k in TENSORS)
    _limit_memory()
    report = {"clean_reads": clean, "formats": {}}
    for f_index, (name, (_, read)) in enumerate(FORMATS.items()):
        source = os.path.join(work, name)
        outcomes, target = collections.Counter(), os.path.join(work, f"mutated_{name}")
        for case in range(cases):
            rng = random.Random(seed * 1_000_003 + f_index * 10_007 + case)
            if os.path.isdir(source):  # a flow.save directory: one of its files
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(source, target)
                files = sorted(os.path.join(r, n) for r, _, ns in os.walk(target) for n in ns)
                victim = rng.choice(files)
            else:
                victim = target
            with open(os.path.join(source, os.path.relpath(victim, target)) if victim != target else source,
                      "rb") as f:
                data, kind = mutate(f.read(), rng)
            with open(victim, "wb") as f:
                f.write(data)
            try:
                read(target)
                outcomes["clean"] += 1
            except CheckpointError:
                outcomes["CheckpointError"] += 1
            except BaseException as err:  # what the test forbids: reported with the case to replay it
                outcomes[f"{type(err).__name__} (case {case}, {kind}): {str(err)[:120]}"] += 1
        report["formats"][name] = dict(outcomes)
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
