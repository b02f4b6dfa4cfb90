"""The float half of the input path, on the device: uint8 batches from the loader workers become normalised float
batches there, with random erasing; and a one-batch prefetch that issues the copy of batch ``k + 1`` before the
training loop runs step ``k`` (timm's ``PrefetchLoader``).

Workers end their transform in :class:`ToUint8` (a ``(3, H, W)`` uint8 tensor, a quarter of the float bytes)
and, when ``aug.reprob > 0``, :class:`EraseBoxes`, which draws the erasing boxes where flowvision's
``RandomErasing`` drew them (Python's ``random``, after the crop, flips and RandAugment, under the sample's seed,
``data/dataset.py``), so the boxes are per sample, independent of worker count and resume. The device does
``x.float() / 255``, ``(x - mean) / std`` (flowvision's ``ToTensor`` and ``Normalize``, the same operations in
the same order: equal within float rounding, bit-equal on CPU) and fills the boxes (:class:`DeviceErasing`):
zeros (``remode: const``, bit-equal to flowvision), or normal noise (``rand`` / ``pixel``) from a generator
seeded from the batch's per-sample seeds (the same boxes as flowvision; other noise values of the same law).
"""
import math
import random

import numpy as np
import oneflow as flow


class ToUint8:
    """PIL RGB image ``(W, H)`` -> uint8 tensor ``(3, H, W)`` (what ``ToTensor`` would divide by 255)."""

    def __call__(self, img):
        arr = np.asarray(img.convert("RGB") if img.mode != "RGB" else img, dtype=np.uint8)
        return flow.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    def __repr__(self):
        return "ToUint8()"


class EraseBoxes:
    """The draws of flowvision's ``RandomErasing`` (timm's) for one image, without touching it: uint8 ``(3, H, W)``
    -> ``(img, boxes)``, ``boxes`` int64 ``(max_count, 5)``: ``top, left, h, w`` per box (``h = 0``: no box) and,
    in every row, a seed for the box's noise. Python's ``random`` is drawn exactly as ``RandomErasing._erase``
    draws it."""

    def __init__(self, probability, max_count=1, min_area=0.02, max_area=1 / 3, min_aspect=0.3):
        self.probability, self.max_count = probability, max_count
        self.min_area, self.max_area = min_area, max_area
        self.log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))

    def __call__(self, img):
        _, img_h, img_w = img.shape
        boxes = np.zeros((self.max_count, 5), dtype=np.int64)
        if random.random() <= self.probability:
            area = img_h * img_w
            count = 1 if self.max_count == 1 else random.randint(1, self.max_count)
            for k in range(count):
                for _ in range(10):
                    target_area = random.uniform(self.min_area, self.max_area) * area / count
                    aspect = math.exp(random.uniform(*self.log_aspect))
                    h = int(round(math.sqrt(target_area * aspect)))
                    w = int(round(math.sqrt(target_area / aspect)))
                    if w < img_w and h < img_h:
                        top = random.randint(0, img_h - h)
                        left = random.randint(0, img_w - w)
                        boxes[k, :4] = (top, left, h, w)
                        break
        boxes[:, 4] = random.getrandbits(31)  # after the boxes: flowvision's draws are untouched
        return img, flow.from_numpy(boxes)

    def __repr__(self):
        return f"EraseBoxes(p={self.probability}, count=(1, {self.max_count}))"


class DeviceErasing:
    """Fill a batch's boxes (:class:`EraseBoxes`, collated ``(B, K, 5)``) on the device: ``x`` ``(B, 3, H, W)``
    float, normalised. Vectorised over the batch (one pass per box slot), no host read of device values."""

    def __init__(self, mode):
        self.mode = mode

    def __call__(self, x, boxes_host, boxes):
        b, c, h, w = x.shape
        gen = flow.Generator(device=x.device.type)
        gen.manual_seed(int(np.random.SeedSequence(boxes_host[:, 0, 4].tolist()).generate_state(1)[0]))
        ys = flow.arange(h, device=x.device).view(1, h, 1)
        xs = flow.arange(w, device=x.device).view(1, 1, w)
        for k in range(boxes.shape[1]):
            top, left, bh, bw = (boxes[:, k, i].view(b, 1, 1) for i in range(4))
            inside = (ys >= top) & (ys < top + bh) & (xs >= left) & (xs < left + bw)
            if self.mode == "pixel":
                fill = flow.randn(b, c, h, w, generator=gen, device=x.device, dtype=x.dtype)
            elif self.mode == "rand":
                fill = flow.randn(b, c, 1, 1, generator=gen, device=x.device, dtype=x.dtype).expand(b, c, h, w)
            else:
                fill = flow.zeros_like(x)
            x = flow.where(inside.unsqueeze(1).expand(b, c, h, w), fill, x)
        return x


class DevicePrep:
    """A loader batch -> device tensors: the images ``float / 255``, normalised, erased; the rest (labels,
    ``valid``) moved as they are. Float images (the synthetic set) only move."""

    def __init__(self, mean, std, device, erasing=None):
        self.device, self.erasing = device, erasing
        self._mean_std = [mean, std]  # made device tensors at the first batch

    def _normalise(self, x):
        if not isinstance(self._mean_std[0], flow.Tensor):
            self._mean_std = [flow.tensor(v, dtype=flow.float32, device=self.device).view(-1, 1, 1)
                              for v in self._mean_std]
        mean, std = self._mean_std
        return flow._C.cast(x, dtype=flow.float32).div(255).sub(mean).div(std)

    def __call__(self, batch):
        images, *rest = batch
        boxes = None
        if isinstance(images, (tuple, list)):
            images, boxes = images
        x = images.to(self.device)
        if x.dtype == flow.uint8:
            x = self._normalise(x)
        if boxes is not None and self.erasing is not None:
            x = self.erasing(x, boxes.numpy(), boxes.to(self.device))
        return (x, *(t.to(self.device) for t in rest))


class DeviceLoader:
    """A DataLoader whose batches come out on the device, prepared by :class:`DevicePrep`. With ``prefetch``
    (CUDA runs, pinned host batches) the copy and preparation of batch ``k + 1`` are issued before batch ``k``
    is handed out, so they run on the device while the host queues step ``k``; on CPU nothing is held back.
    Other attributes (``batch_size``, ``sampler``, ``dataset``, ``len()``) are the loader's."""

    def __init__(self, loader, prep, prefetch=False):
        self.loader, self.prep, self.prefetch = loader, prep, prefetch

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __iter__(self):
        # the loader's iterator is made here, not lazily: callers make it under their RNG guard
        batches = iter(self.loader)
        return self._prefetched(batches) if self.prefetch else (self.prep(b) for b in batches)

    def _prefetched(self, batches):
        pending = None
        for batch in batches:
            ready = self.prep(batch)  # the copy of batch k + 1, issued before batch k goes out
            if pending is not None:
                yield pending
            pending = ready
        if pending is not None:
            yield pending
