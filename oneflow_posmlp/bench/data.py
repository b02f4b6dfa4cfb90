"""The input path's cost (``tools/benchmark.py --data ROOT``): ms per image per worker of the train and eval
transforms (decode included), loader images/s with N workers, main-process ms per batch outside the step (the
device preparation and Mixup/CutMix), host reads per update (eager and graph, counted); and beside them, in the
same run, the official pipeline (timm 0.4.5 ``create_transform(..., use_prefetcher=True)``, run by another
Python that has torch and timm: ``--official-python``, ``scripts/official_data_pipeline.py``).

The folder read is ``ROOT/<split>/<class>/*`` (or shards with ``--opts data.format=shards``)."""
import json
import os
import subprocess
import time
from unittest import mock

import numpy as np
import oneflow as flow

from ..data import build_mixup, build_train_loader, build_val_loader
from ..data.loader import _split
from ..data.transforms import build_transforms
from ..engine.update import mix
from .host_reads import HostReads

# a file of the checkout, not of the package (it imports PyTorch): the side-by-side run is a developer's measurement
OFFICIAL_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                               "scripts", "official_data_pipeline.py")


def _as_worker():
    """Time a sample as a DataLoader worker makes it: a worker does not save and restore the RNG states around
    the per-sample seeding (``data/dataset.py``)."""
    return mock.patch.object(flow.utils.data, "get_worker_info", return_value=object())


def ms_per_image(dataset, images):
    """Mean ms of ``dataset[i]`` (read, decode, transform) over ``images`` samples, after one untimed."""
    n = min(images, len(dataset))
    with _as_worker():
        dataset[0]
        start = time.perf_counter()
        for i in range(n):
            dataset[i]
    return 1000 * (time.perf_counter() - start) / n


def loader_images_per_s(loader, batches):
    """Images/s the loader delivers over ``batches`` batches after the first (workers started)."""
    it = iter(loader)
    next(it)
    start, n = time.perf_counter(), 0
    for _ in range(batches):
        try:
            x = next(it)[0]
        except StopIteration:
            break
        n += len(x)
    return n / max(time.perf_counter() - start, 1e-9)


def main_ms_per_batch(cfg, loader, batches):
    """ms per batch the training process spends outside the step: the device preparation of a uint8 batch
    (``DevicePrep``: cast, normalise, erase) and Mixup/CutMix, on batches already delivered."""
    raw = []
    for batch in loader.loader:
        raw.append(batch)
        if len(raw) == batches:
            break
    mixup = build_mixup(cfg)
    start = time.perf_counter()
    for i, batch in enumerate(raw):
        x, y = mix(mixup, *loader.prep(batch), (0, i, 0), 0)
        x.numpy()  # the work done (on CPU the ops ran already; on CUDA, wait for them)
    return 1000 * (time.perf_counter() - start) / max(len(raw), 1)


def host_reads_per_update(cfg, graph, updates=2):
    """Host reads per update of the trainer's update routine (:class:`~oneflow_posmlp.engine.update.Updater` over
    the eager or graph step object, ``train.amp`` as configured, drop path as configured, no Mixup or EMA), counted
    over ``updates`` updates after one: :class:`~oneflow_posmlp.bench.host_reads.HostReads`."""
    from ..engine.step import build_training
    from ..engine.update import Updater
    from ..models import build_model
    from ..models.drop import drop_path_modules
    from ..parallel import ParallelContext

    cfg = dict(cfg, train=dict(cfg["train"], graph=graph))
    ctx = ParallelContext(cfg["dist"])
    model = build_model(cfg["model"])
    ctx.apply(model)
    training = build_training(cfg, model, flow.nn.CrossEntropyLoss(), ctx, updates_per_epoch=100)
    updater = Updater(training.step, training.scheduler, ctx, 0, drop_path_modules(model), model)
    accum, micro = cfg["train"]["grad_accum_steps"], cfg["train"]["batch_size"] // cfg["train"]["grad_accum_steps"]
    x = flow.randn(micro, 3, *cfg["model"]["img_size"])
    y = flow.randint(0, cfg["model"]["num_classes"], (micro,))
    counts, done = [], 0
    for _ in range(updates + 1):
        with HostReads() as reads:
            _, done = updater.update([(x, y)] * accum, done)
        counts.append(reads.count)
    return max(counts[1:])


def official(python, root, cfg, images, workers, batch):
    """The official pipeline's figures from ``python`` (a Python with torch and timm), or ``{"error": ...}``."""
    a = cfg["aug"]
    spec = {"root": root, "train_split": cfg["data"]["train_split"], "val_split": cfg["data"]["val_split"],
            "images": images, "workers": workers, "batch": batch, "img_size": list(cfg["model"]["img_size"]),
            "auto_augment": a["auto_augment"], "color_jitter": a["color_jitter"], "crop_pct": a["crop_pct"],
            "train_interpolation": a["train_interpolation"], "interpolation": a["interpolation"],
            "scale": a["scale"], "ratio": a["ratio"], "hflip": a["hflip"], "vflip": a["vflip"],
            "mean": a["mean"], "std": a["std"], "reprob": a["reprob"]}
    if not os.path.isfile(OFFICIAL_SCRIPT):
        return {"error": f"{OFFICIAL_SCRIPT} not found: the side-by-side run needs a checkout of oneflow-posmlp"}
    res = subprocess.run([python, OFFICIAL_SCRIPT, json.dumps(spec)], capture_output=True, text=True, timeout=1800)
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_data_benchmark(cfg, images=100, workers=(1, 2), loader_batches=10, official_python=None, reads=True):
    """The figures of the input path for ``cfg`` (``data.root``); a JSON-able dict."""
    d = cfg["data"]
    out = {"root": d["root"], "format": d["format"], "img_size": list(cfg["model"]["img_size"]),
           "batch": cfg["train"]["batch_size"], "images_timed": images}
    for split, train in ((d["train_split"], True), (d["val_split"], False)):
        kind = "train" if train else "eval"
        for output in ("uint8", "float"):
            ds = _split(cfg, split, build_transforms(cfg, train, output), seed=cfg["train"]["seed"] if train else None)
            out[f"{kind}_ms_per_image_{output}"] = ms_per_image(ds, images)
    drafted = _split(cfg, d["train_split"], build_transforms(cfg, True, "uint8", "draft"), seed=cfg["train"]["seed"],
                     lazy=True)
    out["train_ms_per_image_draft"] = ms_per_image(drafted, images)  # data.decode: draft
    train_set = _split(cfg, d["train_split"], build_transforms(cfg, True, "uint8"), seed=cfg["train"]["seed"])
    for n in workers:
        c = dict(cfg, data=dict(d, num_workers=n))
        loader, sampler = build_train_loader(c, train_set)
        sampler.set_epoch(0)
        out[f"loader_images_per_s_{n}_workers"] = loader_images_per_s(loader, loader_batches)
    loader, sampler = build_train_loader(dict(cfg, data=dict(d, num_workers=0)), train_set)
    sampler.set_epoch(0)
    out["main_ms_per_batch_outside_step"] = main_ms_per_batch(cfg, loader, 3)
    if reads:
        for graph in (False, True):
            out[f"host_reads_per_update_{'graph' if graph else 'eager'}"] = host_reads_per_update(cfg, graph)
    if official_python:
        out["official"] = official(official_python, d["root"], cfg, images, workers, cfg["train"]["batch_size"])
    return out


def format_data(result):
    """A readable table of :func:`run_data_benchmark`'s result."""
    o = result.get("official", {})
    lines = [f"input path: {result['root']} ({result['format']}), {result['img_size'][0]}x{result['img_size'][1]}, "
             f"{result['images_timed']} images timed per figure (a shared machine: noisy)",
             f"{'':38s}{'port (uint8)':>14s}{'port (float)':>14s}{'official':>12s}"]
    for kind in ("train", "eval"):
        off = o.get(f"{kind}_ms_per_image")
        lines.append(f"{kind + ' ms per image per worker':38s}{result[f'{kind}_ms_per_image_uint8']:14.2f}"
                     f"{result[f'{kind}_ms_per_image_float']:14.2f}{off if off is None else round(off, 2)!s:>12}")
    if "train_ms_per_image_draft" in result:
        lines.append(f"{'train ms per image, data.decode: draft':38s}{result['train_ms_per_image_draft']:14.2f}")
    for key, value in result.items():
        if key.startswith("loader_images_per_s"):
            off = o.get(key)
            lines.append(f"{key.replace('_', ' '):38s}{value:14.1f}{'':14s}{off if off is None else round(off, 1)!s:>12}")
    lines.append(f"{'main ms per batch outside the step':38s}{result['main_ms_per_batch_outside_step']:14.1f}")
    for mode in ("eager", "graph"):
        key = f"host_reads_per_update_{mode}"
        if key in result:
            lines.append(f"{'host reads per update, ' + mode:38s}{result[key]:14d}")
    if "error" in o:
        lines.append(f"official pipeline: not measured ({o['error']})")
    elif o:
        lines.append(f"official: torch {o.get('torch')}, timm {o.get('timm')}")
    return "\n".join(lines)
