"""Run by ``oneflow_posmlp/bench/data.py`` with ANOTHER Python (torch + timm 0.4.5, a scratch venv outside the
repository); it lives outside the package so that nothing of the package imports PyTorch. The official PosMLP
input pipeline's cost on the same images: ``python official_data_pipeline.py SPEC_JSON`` prints one JSON line.

As the official ``train.py`` runs it: timm's ``create_transform(..., use_prefetcher=True)`` (ends in uint8; the
GPU converts and normalises), images decoded by timm's ``ImageDataset`` loader (PIL, RGB)."""
import json
import sys
import time
import types

# the PyPI torchvision wheel's C ops need CUDA torch libraries that a CPU torch lacks; its import registers fake
# kernels for them and fails. The transforms timm uses are pure Python: skip that registration.
sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
import torch  # noqa: E402
import timm  # noqa: E402
from timm.data import ImageDataset, create_transform
from timm.data.loader import fast_collate


def ms_per_image(ds, n):
    ds[0]
    start = time.perf_counter()
    for i in range(min(n, len(ds))):
        ds[i]
    return 1000 * (time.perf_counter() - start) / min(n, len(ds))


def images_per_s(ds, workers, batch, batches=10):
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                         collate_fn=fast_collate, drop_last=True)
    it = iter(loader)
    next(it)
    start, n = time.perf_counter(), 0
    for _ in range(batches):
        try:
            n += len(next(it)[0])
        except StopIteration:
            break
    return n / max(time.perf_counter() - start, 1e-9)


def main():
    s = json.loads(sys.argv[1])
    torch.manual_seed(0)
    size = tuple(s["img_size"])
    train_tf = create_transform(size, is_training=True, use_prefetcher=True, scale=tuple(s["scale"]),
                                ratio=tuple(s["ratio"]), hflip=s["hflip"], vflip=s["vflip"],
                                color_jitter=s["color_jitter"], auto_augment=s["auto_augment"] or None,
                                interpolation=s["train_interpolation"], mean=tuple(s["mean"]), std=tuple(s["std"]),
                                re_prob=s["reprob"])
    eval_tf = create_transform(size, is_training=False, use_prefetcher=True, interpolation=s["interpolation"],
                               crop_pct=s["crop_pct"], mean=tuple(s["mean"]), std=tuple(s["std"]))
    train = ImageDataset(f"{s['root']}/{s['train_split']}", transform=train_tf)
    val = ImageDataset(f"{s['root']}/{s['val_split']}", transform=eval_tf)
    out = {"torch": torch.__version__, "timm": timm.__version__,
           "train_ms_per_image": ms_per_image(train, s["images"]), "eval_ms_per_image": ms_per_image(val, s["images"])}
    for n in s["workers"]:
        out[f"loader_images_per_s_{n}_workers"] = images_per_s(train, n, s["batch"])
    print(json.dumps(out))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
