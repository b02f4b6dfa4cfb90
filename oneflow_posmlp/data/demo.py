"""The embedded demo data set: coloured geometric shapes as JPEG files in an ImageFolder tree.

``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``; classes circle, square, triangle, cross.
Every image has a random dark background colour with noise and one bright shape of random colour, size,
position and rotation. Generated deterministically from a seed on first use, under a temporary name then renamed, so
an interrupted generation is redone rather than left half-written.
"""
import json
import math
import os
import shutil
import socket

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle", "cross")
VERSION = "shapes-v2"


def _polygon(cx, cy, r, sides, angle):
    return [(cx + r * math.cos(angle + 2 * math.pi * k / sides), cy + r * math.sin(angle + 2 * math.pi * k / sides))
            for k in range(sides)]


def draw_shape(kind, size, rng):
    """One ``size x size`` RGB image of ``kind``."""
    # a dark background and a bright shape: colours vary, the shape always stands out by brightness
    bg = tuple(int(v) for v in rng.integers(0, 110, 3))
    fg = tuple(int(v) for v in rng.integers(150, 256, 3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    r = rng.uniform(0.28, 0.42) * size
    cx, cy = rng.uniform(r, size - r, 2)
    angle = rng.uniform(0, 2 * math.pi)
    if kind == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif kind == "square":
        d.polygon(_polygon(cx, cy, r * 1.1, 4, angle), fill=fg)
    elif kind == "triangle":
        d.polygon(_polygon(cx, cy, r * 1.2, 3, angle), fill=fg)
    elif kind == "cross":
        w = r * 0.35
        for a in (angle, angle + math.pi / 2):
            dx, dy = math.cos(a), math.sin(a)
            px, py = -dy * w, dx * w
            d.polygon([(cx - dx * r + px, cy - dy * r + py), (cx + dx * r + px, cy + dy * r + py),
                       (cx + dx * r - px, cy + dy * r - py), (cx - dx * r - px, cy - dy * r - py)], fill=fg)
    else:
        raise ValueError(f"unknown shape {kind!r}; known: {', '.join(CLASSES)}")
    noise = rng.normal(0, 12, (size, size, 3))
    arr = np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


_LEGACY_DEFAULTS = (300, 75, 40, 0)


def _spec(train_per_class, val_per_class, size, seed):
    return json.dumps({"version": VERSION, "classes": list(CLASSES), "train_per_class": train_per_class,
                       "val_per_class": val_per_class, "size": size, "seed": seed}, sort_keys=True)


def _marker(root):
    path = os.path.join(root, ".complete")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return f.read().strip()


def _remove_stale_tmp(root):
    """Delete ``<root>.tmp-<host>-<pid>`` folders left by generations on this host whose process is gone."""
    parent, base = os.path.split(root)
    host = socket.gethostname()
    for name in os.listdir(parent or "."):
        if not name.startswith(base + ".tmp-"):
            continue
        owner, _, pid = name[len(base) + 5:].rpartition("-")
        if owner != host or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
        except PermissionError:
            pass


def ensure_demo_dataset(root, train_per_class=300, val_per_class=75, size=40, seed=0, log=print):
    """Generate the demo set at ``root`` unless a complete one with these parameters is there; returns the
    absolute ``root``.

    Written into ``<root>.tmp-<host>-<pid>`` then renamed, so a killed generation leaves no half set at
    ``root`` (its temporary folder is removed by the next call on the same host). Several ranks may call
    this at once: each generates the same bytes and the first rename wins. Raises ``FileExistsError`` when
    ``root`` holds something else, :class:`~oneflow_posmlp.data.DataError` when it holds a demo set of
    other parameters.
    """
    from .dataset import DataError

    root = os.path.abspath(os.fspath(root))
    spec = _spec(train_per_class, val_per_class, size, seed)
    marker = _marker(root)
    if marker == spec or (marker == VERSION and spec == _spec(*_LEGACY_DEFAULTS)):
        return root  # (a set marked by the first version, "shapes-v2" alone, is these same images)
    if marker is not None:
        raise DataError(f"{root} holds a demo data set of other parameters ({marker}); delete it to regenerate "
                        f"with {spec}, or point data.root elsewhere")
    if os.path.exists(root) and os.listdir(root):
        raise FileExistsError(f"{root} exists but is not a complete demo data set; remove it or point "
                              f"data.root elsewhere")
    os.makedirs(os.path.dirname(root), exist_ok=True)
    _remove_stale_tmp(root)
    tmp = f"{root}.tmp-{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for kind in CLASSES:
            folder = os.path.join(tmp, split, kind)
            os.makedirs(folder)
            for i in range(count):
                draw_shape(kind, size, rng).save(os.path.join(folder, f"{kind}_{i:04d}.jpg"), quality=90)
    with open(os.path.join(tmp, ".complete"), "w") as f:
        f.write(spec + "\n")
    try:
        os.rename(tmp, root)  # atomic; replaces an empty folder, fails on a non-empty one
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if _marker(root) != spec:  # not another rank's identical set: a real problem
            raise
        return root
    log(f"generated the demo data set at {root}: {len(CLASSES)} classes, "
        f"{train_per_class * len(CLASSES)} train / {val_per_class * len(CLASSES)} val JPEG images of {size}x{size}")
    return root
