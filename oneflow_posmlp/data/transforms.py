"""timm-style train/eval transforms from flowvision's building blocks, driven by the config's ``aug:`` section.

Train (PIL image -> ``(3, H, W)`` float tensor): RandomResizedCrop(scale, ratio, interpolation) ->
horizontal flip -> RandAugment/AutoAugment/AugMix from the ``aug.auto_augment`` string (else ColorJitter) ->
ToTensor -> Normalize(mean, std) -> RandomErasing(reprob, remode, recount).
Eval: Resize(floor(size / crop_pct)) -> CenterCrop(size) -> ToTensor -> Normalize.

``output="uint8"`` (what the loaders use): the same PIL steps, then :class:`~oneflow_posmlp.data.device.ToUint8`
(and :class:`~oneflow_posmlp.data.device.EraseBoxes` when erasing); ``ToTensor``, ``Normalize`` and the erasing
itself run on the device (``data/device.py``). ``output="float"``: the whole transform on the host (prediction
on single images, and the reference the uint8 path is tested against).

This is flowvision's ``transforms_imagenet_train``/``transforms_imagenet_eval`` (0.2.1) with one addition:
``train_interpolation: random`` (the official recipe, timm's ``RandomResizedCropAndInterpolation``) picks
bilinear or bicubic per image; flowvision 0.2.1 raises ``KeyError: 'random'`` for it. As in timm, colour
jitter is only applied when ``auto_augment`` is empty (RandAugment already varies colour).
"""
import random
import warnings

from flowvision import transforms
from flowvision.data import create_transform
from flowvision.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform
from flowvision.data.random_erasing import RandomErasing
from flowvision.transforms import InterpolationMode
from flowvision.transforms import functional as F
from flowvision.transforms.functional import str_to_pil_interp

from .device import EraseBoxes, ToUint8


class RandomResizedCropAndInterpolation(transforms.RandomResizedCrop):
    """flowvision's RandomResizedCrop; with ``interpolation="random"`` each image is resized with bilinear or
    bicubic at random (timm's behaviour, drawn from Python's ``random``).

    ``draft`` (``data.decode: draft``): given an undecoded JPEG (``dataset.open_image(lazy=True)``) whose crop box
    is at least twice the output size on both sides, libjpeg decodes it reduced by 2, 4 or 8 (DCT scaling,
    ``Image.draft``; never below the box's output size) and the box is scaled to match. The random draws are
    those of a full decode, so every other sample is unchanged."""

    RANDOM = (InterpolationMode.BILINEAR, InterpolationMode.BICUBIC)

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation="bilinear", draft=False):
        self.draft = draft
        self.random_interpolation = interpolation == "random"
        super().__init__(size, scale=scale, ratio=ratio,
                         interpolation=InterpolationMode.BILINEAR if self.random_interpolation
                         else InterpolationMode(interpolation))

    def forward(self, img):
        i, j, h, w = self.get_params(img, self.scale, self.ratio)
        mode = random.choice(self.RANDOM) if self.random_interpolation else self.interpolation
        if self.draft:
            img, (i, j, h, w) = draft_decode(img, (i, j, h, w), self.size)
        return F.resized_crop(img, i, j, h, w, self.size, mode)

    def __repr__(self):
        text = super().__repr__()
        return text.replace("interpolation=bilinear", "interpolation=random") if self.random_interpolation else text


def draft_decode(img, box, size):
    """``(RGB image, box)``: ``img`` decoded, reduced by libjpeg when the crop ``box`` ``(top, left, h, w)`` is at
    least twice ``size`` ``(H, W)`` on both sides (the box scaled to the reduced image), else in full."""
    top, left, h, w = box
    reduce = min(h // size[0], w // size[1])
    if reduce >= 2 and getattr(img, "format", None) == "JPEG" and getattr(img, "tile", None):  # not decoded yet
        full_w, full_h = img.size
        img.draft("RGB", (-(-full_w // reduce), -(-full_h // reduce)))  # picks 1/2, 1/4, 1/8 no smaller than asked
        sx, sy = img.size[0] / full_w, img.size[1] / full_h
        if (sx, sy) != (1.0, 1.0):
            top, left = int(top * sy), int(left * sx)
            h = max(size[0], min(int(round(h * sy)), img.size[1] - top))
            w = max(size[1], min(int(round(w * sx)), img.size[0] - left))
    return (img if img.mode == "RGB" else img.convert("RGB")), (top, left, h, w)


def _auto_augment(spec, img_size, mean, interpolation):
    """The flowvision transform for a timm augmentation string (``rand-m6-n3-mstd1.0-inc1``, ``augmix-...``,
    ``v0``/``original``...); its hyper-parameters as timm/flowvision set them."""
    params = dict(translate_const=int(min(img_size) * 0.45), img_mean=tuple(min(255, round(255 * x)) for x in mean))
    if interpolation != "random":  # random: the ops draw bilinear/bicubic themselves
        params["interpolation"] = str_to_pil_interp(interpolation)
    if spec.startswith("rand"):
        return rand_augment_transform(spec, params)
    if spec.startswith("augmix"):
        params["translate_pct"] = 0.3
        return augment_and_mix_transform(spec, params)
    return auto_augment_transform(spec, params)


OUTPUTS = ("float", "uint8")


def build_train_transform(aug, img_size, output="float", decode="full"):
    """``aug``: the config's ``aug:`` section; ``img_size``: ``[H, W]``. PIL image -> normalised ``(3, H, W)``
    float (``output="float"``), or uint8 ``(3, H, W)`` (``"uint8"``; with ``aug.reprob > 0`` the pair
    ``(image, erasing boxes)``)."""
    size = tuple(img_size)
    ops = [RandomResizedCropAndInterpolation(size, scale=tuple(aug["scale"]), ratio=tuple(aug["ratio"]),
                                             interpolation=aug["train_interpolation"], draft=decode == "draft")]
    if aug["hflip"] > 0:
        ops.append(transforms.RandomHorizontalFlip(p=aug["hflip"]))
    if aug["vflip"] > 0:
        ops.append(transforms.RandomVerticalFlip(p=aug["vflip"]))
    if aug["auto_augment"]:
        ops.append(_auto_augment(aug["auto_augment"], size, aug["mean"], aug["train_interpolation"]))
    elif aug["color_jitter"] > 0:
        ops.append(transforms.ColorJitter(*(float(aug["color_jitter"]),) * 3))
    if output == "uint8":
        return transforms.Compose(ops + [ToUint8()] + ([EraseBoxes(aug["reprob"], max_count=aug["recount"])]
                                                       if aug["reprob"] > 0 else []))
    ops += [transforms.ToTensor(), transforms.Normalize(mean=tuple(aug["mean"]), std=tuple(aug["std"]))]
    if aug["reprob"] > 0:
        ops.append(RandomErasing(aug["reprob"], mode=aug["remode"], max_count=aug["recount"], device="cpu"))
    return transforms.Compose(ops)


DATA_KEYS = ("input_size", "interpolation", "crop_pct", "mean", "std")


def resolve_data_config(default_cfg, aug=None):
    """timm's ``resolve_data_config``: the eval data settings of a model's ``default_cfg`` (input size, interpolation,
    crop_pct, mean, std), overridden by a training config's ``aug:`` section when one is given (what the model was
    trained and evaluated with)."""
    data = {k: default_cfg[k] for k in DATA_KEYS}
    if aug is not None:
        data.update(interpolation=aug["interpolation"], crop_pct=aug["crop_pct"], mean=tuple(aug["mean"]),
                    std=tuple(aug["std"]))
    return data


def create_eval_transform(data_cfg, output="float"):
    """flowvision's eval transform from a data config (a model's ``default_cfg`` or :func:`resolve_data_config`):
    resize to ``size / crop_pct``, centre crop ``size``, normalise. PIL image -> ``(3, H, W)`` float, or
    (``output="uint8"``) uint8 before ``ToTensor`` and ``Normalize``, which the device does."""
    with warnings.catch_warnings():  # flowvision 0.2.1 passes PIL ints to its own Resize, which warns
        warnings.filterwarnings("ignore", "Argument interpolation should be of type InterpolationMode")
        t = create_transform(tuple(data_cfg["input_size"][-2:]), is_training=False,
                             interpolation=data_cfg["interpolation"], crop_pct=data_cfg["crop_pct"],
                             mean=tuple(data_cfg["mean"]), std=tuple(data_cfg["std"]))
    if output == "uint8":
        t = transforms.Compose([op for op in t.transforms if not isinstance(op, (transforms.ToTensor,
                                                                                 transforms.Normalize))]
                               + [ToUint8()])
    return t


def build_eval_transform(aug, img_size, output="float"):
    """The eval transform of a config's ``aug:`` section at ``img_size`` (see :func:`create_eval_transform`)."""
    return create_eval_transform(dict(input_size=(3, *img_size), interpolation=aug["interpolation"],
                                      crop_pct=aug["crop_pct"], mean=aug["mean"], std=aug["std"]), output)


def build_transforms(cfg, train, output="float", decode="full"):
    """The train (``train=True``) or eval transform of a loaded config (``aug:`` and ``model.img_size``);
    ``output``: ``float`` (all on the host) or ``uint8`` (the loaders': float work on the device)."""
    if output not in OUTPUTS:
        raise ValueError(f"output {output!r}: one of {', '.join(OUTPUTS)}")
    if train:
        return build_train_transform(cfg["aug"], cfg["model"]["img_size"], output, decode)
    return build_eval_transform(cfg["aug"], cfg["model"]["img_size"], output)
