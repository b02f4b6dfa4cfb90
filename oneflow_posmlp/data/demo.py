"""The embedded demo data set: coloured geometric shapes as JPEG files in an ImageFolder tree.

``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``; classes circle, square, triangle, cross.
Every image has a random dark background colour with noise and one bright shape of random colour, size,
position and rotation. Generated deterministically from a seed on first use, under a temporary name then renamed, so
an interrupted generation is redone rather than left half-written.
"""
import math
import os
import random
import shutil

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


def is_complete(root):
    marker = os.path.join(root, ".complete")
    return os.path.isfile(marker) and open(marker).read().strip() == VERSION


def ensure_demo_dataset(root, train_per_class=300, val_per_class=75, size=40, seed=0, log=print):
    """Generate the demo set at ``root`` unless a complete one is there. Returns ``root``."""
    root = os.path.abspath(root)
    if is_complete(root):
        return root
    if os.path.exists(root) and os.listdir(root):
        raise FileExistsError(f"{root} exists but is not a complete demo data set; remove it or point "
                              f"data.root elsewhere")
    tmp = f"{root}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    rng = np.random.default_rng(seed)
    random.seed(seed)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for kind in CLASSES:
            folder = os.path.join(tmp, split, kind)
            os.makedirs(folder)
            for i in range(count):
                draw_shape(kind, size, rng).save(os.path.join(folder, f"{kind}_{i:04d}.jpg"), quality=90)
    with open(os.path.join(tmp, ".complete"), "w") as f:
        f.write(VERSION + "\n")
    if os.path.exists(root):
        os.rmdir(root)
    os.rename(tmp, root)
    log(f"generated the demo data set at {root}: {len(CLASSES)} classes, "
        f"{train_per_class * len(CLASSES)} train / {val_per_class * len(CLASSES)} val JPEG images of {size}x{size}")
    return root
