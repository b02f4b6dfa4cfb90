"""Predict: top-k classes of image files and folders with a trained or converted PosMLP.

Images go through the model's eval transform (the config's ``aug:`` over the model's ``default_cfg``), in batches;
a file that cannot be read or decoded is reported with its reason and the others still run. Class names come
from a ``--labels`` file, else from the weights (``classes`` of a training checkpoint or of converted weights'
metadata), else ``class_<i>``.
"""
import json
import os

import numpy as np
from flowvision.datasets.folder import IMG_EXTENSIONS

from .checkpoint import CheckpointError


def collect_images(paths):
    """``(files, errors)``: the files given and the images under the folders given (recursively, sorted, by
    extension), in order; ``errors`` lists ``(path, reason)`` for paths that do not exist or hold no image."""
    files, errors = [], []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(os.path.join(root, f) for root, _, names in os.walk(path, followlinks=True)
                           for f in names if f.lower().endswith(IMG_EXTENSIONS))
            if not found:
                errors.append((path, f"folder holds no images ({', '.join(IMG_EXTENSIONS)})"))
            files += found
        elif os.path.isfile(path):
            files.append(path)
        else:
            errors.append((path, "no such file or folder"))
    return files, errors


def read_labels(path):
    """Class names from a text file (one per line, in class-index order) or a JSON list."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as err:
        raise CheckpointError(f"--labels {path}: cannot read it ({err.strerror})") from None
    if path.endswith(".json"):
        try:
            names = json.loads(text)
        except json.JSONDecodeError as err:
            raise CheckpointError(f"--labels {path}: not valid JSON ({err})") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise CheckpointError(f"--labels {path}: expected a JSON list of class names")
        return names
    return [line.strip() for line in text.splitlines() if line.strip()]


def class_names(meta, labels_file=None):
    """Class names for predictions: ``labels_file`` if given, else the ``classes`` stored with the weights
    (``meta``: the metadata of :func:`oneflow_posmlp.checkpoint.load_weights`; training checkpoints and the
    safetensors converted or exported from them carry them), else None."""
    if labels_file:
        return read_labels(labels_file)
    return list(meta["classes"]) if meta and meta.get("classes") else None


def check_names(names, num_classes):
    if names is None:
        return [f"class_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise CheckpointError(f"{len(names)} class names for a model of {num_classes} classes; give a --labels file "
                              f"with one name per class")
    return names


def load_image(path, transform):
    """``(tensor, None)`` or ``(None, reason)`` for a file PIL cannot open or decode."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            img = img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        return None, f"cannot read the image ({type(err).__name__}: {err})"
    return transform(img), None


def predict(model, transform, files, names, topk=5, batch_size=32):
    """Yield ``{"path", "top": [{"index", "class", "prob"}]}`` or ``{"path", "error"}`` per file, in order."""
    import oneflow as flow

    k = min(topk, len(names))
    model.eval()
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        loaded = [load_image(p, transform) for p in chunk]
        good = [(p, t) for p, (t, _) in zip(chunk, loaded) if t is not None]
        probs = {}
        if good:
            with flow.no_grad():
                logits = model(flow.stack([t for _, t in good]))
            p = flow.softmax(logits.to(flow.float32), dim=-1).numpy()
            for (path, _), row in zip(good, p):
                probs[path] = row
        for path, (_, err) in zip(chunk, loaded):
            if err is not None:
                yield {"path": path, "error": err}
                continue
            row = probs[path]
            order = np.argsort(-row, kind="stable")[:k]
            yield {"path": path, "top": [{"index": int(i), "class": names[i], "prob": float(row[i])} for i in order]}


def format_table(results):
    """Rows ``path | rank | class | probability`` for a terminal."""
    lines = []
    width = max([len(r["path"]) for r in results if "error" not in r] + [4])
    lines.append(f"{'path':<{width}}  rank  {'class':<20} prob")
    for r in results:
        if "error" in r:
            continue
        for rank, t in enumerate(r["top"], 1):
            lines.append(f"{r['path'] if rank == 1 else '':<{width}}  {rank:>4}  {t['class']:<20} {t['prob']:.4f}")
    return "\n".join(lines)
