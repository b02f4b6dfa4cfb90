"""Tar shards: an ImageFolder tree packed into a few large files, read by byte offset.

``make_shards(src, dst)`` packs ``src/<split>/<class>/*`` into ``dst/<split>-NNNNNN.tar`` (WebDataset layout:
members ``<key>.jpg`` holding the file's bytes and ``<key>.cls`` holding the label as text, so WebDataset and
timm read them) and writes ``dst/<split>-index.json``: the class names, each shard's name, size and sha256, and
per sample (in ImageFolder's order, so sample ``i`` is the same image as in the folder) its shard, the byte
offset and size of its image member, its label and its key. ``index_shards(dst, split)`` (``--index-only``)
writes the index of WebDataset shards made elsewhere.

:class:`ShardDataset` reads sample ``i`` with one positioned read (``os.pread``) of its shard, which each
process (each DataLoader worker) opens once; the sampler, the split over ranks, per-sample augmentation seeds
and mid-epoch resume are those of folders. Problems are one :class:`ShardError` naming the shard and the fix:
a missing, truncated or changed shard (size at open; at every read the tar header before the member must name
it), an index of another data set, labels outside the classes. A member that is not an image is a corrupt image
(skipped, as in folders). Standard library ``tarfile``, no third-party reader.
"""
import io
import json
import os
import re
import tarfile

import oneflow as flow
from flowvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from ..files import sha256_of
from .dataset import DataError, SkipCorrupt, check_image_folder, open_image

INDEX_FORMAT = "oneflow-posmlp-shards-1"
SHARD_NAME = re.compile(r"^(?P<split>.+)-(?P<num>\d{6})\.tar$")
IMAGE_SUFFIXES = tuple(e.lstrip(".") for e in IMG_EXTENSIONS)


def shard_names(folder, split):
    """The names of ``split``'s shards in ``folder`` (``<split>-NNNNNN.tar``), sorted."""
    matches = (SHARD_NAME.match(n) for n in os.listdir(folder))
    return sorted(m.group(0) for m in matches if m and m.group("split") == split)


class ShardError(DataError):
    """A shard or shard index problem; the message names the shard and the fix."""


def index_path(root, split):
    return os.path.join(root, f"{split}-index.json")


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def make_shards(src, dst, shard_mb=1024, splits=None, log=print):
    """Pack every split folder of ``src`` (or ``splits``) into shards of about ``shard_mb`` MB in ``dst`` and index
    them. Returns ``{split: samples}``."""
    splits = splits or sorted(e.name for e in os.scandir(src) if e.is_dir())
    if not splits:
        raise DataError(f"{src} has no split folders; expected {src}/<split>/<class>/<images>")
    os.makedirs(dst, exist_ok=True)
    counts = {}
    for split in splits:
        root = os.path.join(src, split)
        check_image_folder(root)
        classes, class_to_idx = find_classes(root)
        samples = make_dataset(root, class_to_idx, IMG_EXTENSIONS)
        for old in shard_names(dst, split):
            os.remove(os.path.join(dst, old))
        shard, tar, num = None, None, 0
        for i, (path, label) in enumerate(samples):
            if tar is None or tar.offset >= shard_mb * 1e6:
                if tar is not None:
                    tar.close()
                shard = os.path.join(dst, f"{split}-{num:06d}.tar")
                tar, num = tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT), num + 1
            with open(path, "rb") as f:
                data = f.read()
            ext = os.path.splitext(path)[1].lower().lstrip(".")
            ext = "jpg" if ext == "jpeg" else ext
            key = f"{i:08d}"
            _add(tar, f"{key}.{ext}", data)
            _add(tar, f"{key}.cls", str(label).encode())
        if tar is not None:
            tar.close()
        counts[split] = len(samples)
        index_shards(dst, split, classes=classes, log=log)
    return counts


def index_shards(root, split, classes=None, log=print):
    """Index the WebDataset shards ``root/<split>-NNNNNN.tar`` (members ``<key>.<image suffix>`` and
    ``<key>.cls``), writing ``root/<split>-index.json``. ``classes``: the class names (default: ``"0"``,
    ``"1"``... up to the largest label). Returns the index."""
    names = shard_names(root, split)
    if not names:
        raise ShardError(f"no shards {split}-NNNNNN.tar in {root}; make them with tools/make_shards.py --src ROOT "
                         f"--dst {root}")
    shards, samples = [], {"shard": [], "offset": [], "size": [], "label": [], "key": []}
    for s, name in enumerate(names):
        path = os.path.join(root, name)
        images, labels = {}, {}
        try:
            with tarfile.open(path, "r:") as tar:
                for m in tar:
                    if not m.isfile():
                        continue
                    key, _, ext = m.name.rpartition(".")
                    if ext == "cls":
                        labels[key] = int(tar.extractfile(m).read().decode().strip())
                    elif ext.lower() in IMAGE_SUFFIXES:
                        images[key] = (m.offset_data, m.size)
        except (tarfile.TarError, ValueError, EOFError) as err:
            raise ShardError(f"shard {path} is not a readable tar of WebDataset members ({err}); re-copy it or "
                             f"re-make it with tools/make_shards.py") from err
        missing = sorted(set(images) - set(labels))
        if missing:
            raise ShardError(f"shard {path}: {len(missing)} image(s) without a <key>.cls label (first: {missing[0]}); "
                             f"every sample needs <key>.jpg and <key>.cls")
        for key in images:  # tar order
            samples["shard"].append(s)
            samples["offset"].append(images[key][0])
            samples["size"].append(images[key][1])
            samples["label"].append(labels[key])
            samples["key"].append(key)
        shards.append({"name": name, "size": os.path.getsize(path), "sha256": sha256_of(path)})
    top = max(samples["label"], default=-1)
    if classes is None:
        classes = [str(c) for c in range(top + 1)]
    if top >= len(classes) or min(samples["label"], default=0) < 0:
        raise ShardError(f"{root}/{split}: labels run to {top} but there are {len(classes)} classes; the .cls "
                         f"members must be 0..classes-1")
    index = {"format": INDEX_FORMAT, "split": split, "classes": list(classes), "shards": shards, "samples": samples}
    tmp = index_path(root, split) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(index, f)
    os.replace(tmp, index_path(root, split))
    log(f"indexed {len(samples['key'])} {split} samples in {len(shards)} shard(s) of {root}")
    return index


def load_index(root, split):
    path = index_path(root, split)
    if not os.path.isfile(path):
        raise ShardError(f"no shard index {path}; make shards with tools/make_shards.py --src ROOT --dst {root}, or "
                         f"index WebDataset shards with tools/make_shards.py --index-only --dst {root}")
    with open(path) as f:
        index = json.load(f)
    if index.get("format") != INDEX_FORMAT or index.get("split") != split:
        raise ShardError(f"{path} is not a {split} shard index of this format ({INDEX_FORMAT}); re-index with "
                         f"tools/make_shards.py --index-only --dst {root}")
    return index


class ShardDataset(SkipCorrupt, flow.utils.data.Dataset):
    """The samples of ``root/<split>-index.json`` (:func:`make_shards`), read by offset; ``(image, label)`` as
    :class:`~oneflow_posmlp.data.SafeImageFolder` gives them (same order, skipping and seeding). ``verify``:
    also check every shard's sha256 at open (reads all the data once)."""

    def __init__(self, root, split, transform=None, seed=None, verify=False, lazy=False):
        self.root = os.path.join(root, split)  # named in messages as a folder would be
        self.dir, self.transform = root, transform
        index = load_index(root, split)
        self.classes = index["classes"]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.shards = [os.path.join(root, s["name"]) for s in index["shards"]]
        for s, path in zip(index["shards"], self.shards):
            fix = (f"re-copy it, or re-index with tools/make_shards.py --index-only --dst {root} if the shards "
                   f"were remade")
            if not os.path.isfile(path):
                raise ShardError(f"shard {path} named by {index_path(root, split)} is missing; {fix}")
            size = os.path.getsize(path)
            if size != s["size"]:
                raise ShardError(f"shard {path} is {size} bytes but the index says {s['size']}: it was truncated "
                                 f"or changed; {fix}")
            if verify and sha256_of(path) != s["sha256"]:
                raise ShardError(f"shard {path} does not match the sha256 of its index: it was changed; {fix}")
        smp = index["samples"]
        self.offsets, self.sizes, self.keys = smp["offset"], smp["size"], smp["key"]
        self.shard_of = smp["shard"]
        self.samples = [(f"{index['shards'][s]['name']}:{k}", int(label))
                        for s, k, label in zip(smp["shard"], smp["key"], smp["label"])]
        if any(not 0 <= label < len(self.classes) for _, label in self.samples):
            raise ShardError(f"{index_path(root, split)} has labels outside its {len(self.classes)} classes; "
                             f"re-index with tools/make_shards.py --index-only --dst {root}")
        self.targets = [label for _, label in self.samples]
        self._files, self._pid = {}, None
        self.lazy = lazy
        self._init_skip(seed)

    def __len__(self):
        return len(self.samples)

    def _fd(self, shard):
        if self._pid != os.getpid():  # a forked worker opens its own (once per shard)
            self._files, self._pid = {}, os.getpid()
        if shard not in self._files:
            self._files[shard] = os.open(self.shards[shard], os.O_RDONLY)
        return self._files[shard]

    def _load(self, i):
        shard, offset, size = self.shard_of[i], self.offsets[i], self.sizes[i]
        block = os.pread(self._fd(shard), size + tarfile.BLOCKSIZE, offset - tarfile.BLOCKSIZE)
        header, data = block[:tarfile.BLOCKSIZE], block[tarfile.BLOCKSIZE:]
        try:
            info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
            # the member's own header (a long name may sit in a pax header before it, truncated here)
            ok = info.size == size and (info.name.rpartition(".")[0] == self.keys[i] or len(info.name) >= 99)
        except tarfile.TarError:
            ok = False
        if not ok or len(data) != size:
            raise ShardError(f"shard {self.shards[shard]} does not hold sample {self.keys[i]} at byte {offset}: the "
                             f"shard was changed or the index is of other shards; re-index with tools/make_shards.py "
                             f"--index-only --dst {self.dir}")
        return open_image(data, self.lazy), self.samples[i][1]

    def __del__(self):
        if getattr(self, "_pid", None) == os.getpid():
            for fd in self._files.values():
                try:
                    os.close(fd)
                except OSError:
                    pass
