"""Model configuration: defaults, the registry of named models, and validation.

A config ``model:`` section is a dict whose keys mirror the official ``PosMLP(...)`` keyword arguments;
``name`` picks a registry entry whose fields the other keys override. :func:`resolve_model_config`
returns the complete, validated keyword set; every error names the offending value and a fix.
"""
import copy
import difflib
import math

DEFAULTS = dict(
    img_size=[224, 224],
    in_chans=3,
    embed_dims=[96, 192, 384, 768],
    depths=[2, 2, 18, 2],
    win_size=[14, 14, 14, 7],
    gamma=[8, 16, 32, 64],
    mlp_ratio=[4, 4, 4, 2],
    num_levels=4,
    num_classes=1000,
    quadratic=True,
    pos_only=True,
    generalized=True,
    symmetric=True,
    absolute_bias=True,
    stem_norm="BN",
    downsample_norm="LN",
    shift=False,
    chunks=2,
    drop_rate=0.0,
    drop_path_rate=0.1,
    gate_unit="posgu",
    pool_layer="conv",
)

PER_LEVEL = ("embed_dims", "depths", "win_size", "gamma", "mlp_ratio")

REGISTRY = {
    # Official PosMLP_T14_224: 20,925,538 parameters.
    "posmlp_t": dict(embed_dims=[96, 192, 384, 768]),
    # Official PosMLP_S14_224: 36,816,450 parameters.
    "posmlp_s": dict(embed_dims=[128, 256, 512, 1024]),
    # PosMLP-B of the paper (official README: 82M parameters); no official recipe for drop path.
    "posmlp_b": dict(embed_dims=[192, 384, 768, 1536], drop_path_rate=0.3),
    # T at 384x384. The official PosMLP_T14_384 keeps windows (14, 14, 14, 7), which do not tile its
    # 96/48/24/12 feature maps and fails; windows of 12 tile every level (64/16/4/1 windows).
    "posmlp_t_384": dict(img_size=[384, 384], win_size=[12, 12, 12, 12]),
}

# timm/flowvision-style per-model defaults (``model.default_cfg``): the data a model expects. The ImageNet mean
# and std equal flowvision.data.constants.IMAGENET_DEFAULT_MEAN/STD (a test checks); 0.9 bicubic is the official
# PosMLP eval transform. Entries of PRETRAINED_CFGS override DEFAULT_CFG per registered name.
DEFAULT_CFG = dict(
    url="",
    num_classes=1000,
    input_size=(3, 224, 224),
    pool_size=(7, 7),
    crop_pct=0.9,
    interpolation="bicubic",
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    first_conv="patch_embed.projs.0",
    classifier="head",
)
PRETRAINED_CFGS = {
    "posmlp_t": {}, "posmlp_s": {}, "posmlp_b": {},
    "posmlp_t_384": dict(crop_pct=1.0),  # timm's convention at 384: no border cropped
}

ALIASES = {"windows": "win_size"}  # the official YAML's model_hyper spells win_size "windows"


class ModelConfigError(ValueError):
    """An invalid model configuration; the message names the value and how to fix it."""


def list_models():
    return sorted(REGISTRY)


def _nearest(key, choices):
    close = difflib.get_close_matches(key, choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _as_list(key, value, n):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value] * n
    if not isinstance(value, (list, tuple)):
        raise ModelConfigError(f"model.{key} must be a list of {n} values, got {value!r}")
    return list(value)


def resolve_model_config(model_cfg=None, **overrides):
    """Validated, complete model kwargs (a new dict) from a config ``model:`` section.

    Raises :class:`ModelConfigError` for an unknown key or name, wrong lengths, or sizes that do not fit.
    """
    cfg = dict(model_cfg or {})
    cfg.update(overrides)
    for old, new in ALIASES.items():
        if old in cfg:
            if new in cfg and cfg[new] != cfg[old]:
                raise ModelConfigError(f"model: both '{old}' and '{new}' given; keep only '{new}'")
            cfg[new] = cfg.pop(old)
    name = cfg.pop("name", None)
    resolved = copy.deepcopy(DEFAULTS)
    if name is not None:
        if name not in REGISTRY:
            raise ModelConfigError(f"unknown model name '{name}'{_nearest(name, list(REGISTRY))}; "
                                   f"known models: {', '.join(list_models())}")
        resolved.update(copy.deepcopy(REGISTRY[name]))
    for key in cfg:
        if key not in DEFAULTS:
            raise ModelConfigError(f"unknown model config key '{key}'{_nearest(key, list(DEFAULTS))}; "
                                   f"valid keys: name, {', '.join(DEFAULTS)}")
    resolved.update(cfg)
    resolved["name"] = name
    _validate(resolved)
    return resolved


def _validate(c):
    n = c["num_levels"]
    if not isinstance(n, int) or n < 1:
        raise ModelConfigError(f"model.num_levels must be a positive integer, got {n!r}")
    img = c["img_size"]
    img = [img, img] if isinstance(img, int) else list(img)
    if len(img) != 2 or not all(isinstance(v, int) and v > 0 for v in img):
        raise ModelConfigError(f"model.img_size must be an int or [height, width], got {c['img_size']!r}")
    c["img_size"] = img
    for key in PER_LEVEL:
        c[key] = _as_list(key, c[key], n)
        if len(c[key]) != n:
            raise ModelConfigError(f"model.{key} has {len(c[key])} entries but num_levels is {n}; "
                                   f"give one value per level")
    for key in ("stem_norm", "downsample_norm"):
        if c[key] not in ("BN", "LN"):
            raise ModelConfigError(f"model.{key} must be 'BN' or 'LN', got {c[key]!r}")
    if c["gate_unit"] not in ("posgu", "sgu"):
        raise ModelConfigError(f"model.gate_unit must be 'posgu' or 'sgu', got {c['gate_unit']!r}")
    if c["pool_layer"] not in ("conv", "merging"):
        raise ModelConfigError(f"model.pool_layer must be 'conv' or 'merging', got {c['pool_layer']!r}")
    chunks = c["chunks"]
    if c["gate_unit"] == "posgu" and chunks not in (1, 2):
        raise ModelConfigError(f"model.chunks must be 1 or 2 for PoSGU, got {chunks!r}")
    if c["gate_unit"] == "sgu" and (not isinstance(chunks, int) or chunks < 2):
        raise ModelConfigError(f"model.chunks must be >= 2 for the SGU baseline, got {chunks!r}")
    for key in ("drop_rate", "drop_path_rate"):
        if not 0.0 <= float(c[key]) < 1.0:
            raise ModelConfigError(f"model.{key} must be in [0, 1), got {c[key]!r}")

    for i in range(n):
        h, w = img[0] // 4 // 2 ** i, img[1] // 4 // 2 ** i
        exact = img[0] % (4 * 2 ** i) == 0 and img[1] % (4 * 2 ** i) == 0
        win = c["win_size"][i]
        if not exact or h % win or w % win:
            raise ModelConfigError(
                f"model.img_size {img[0]}x{img[1]}: level {i} works on a {img[0] / 4 / 2 ** i:g}x"
                f"{img[1] / 4 / 2 ** i:g} feature map (stride {4 * 2 ** i}), which windows of "
                f"{win}x{win} (model.win_size[{i}]) do not tile; use an img_size that is a multiple of "
                f"{4 * 2 ** i * win} or a window size dividing the feature map")
        dim = c["embed_dims"][i]
        if i > 0 and c["pool_layer"] == "conv" and dim % c["embed_dims"][i - 1]:
            raise ModelConfigError(
                f"model.embed_dims {c['embed_dims']}: the depthwise downsampling conv of level {i} "
                f"(groups = {c['embed_dims'][i - 1]}) cannot map {c['embed_dims'][i - 1]} to {dim} channels; "
                f"make embed_dims[{i}] a multiple of embed_dims[{i - 1}] or use pool_layer: merging")
        if i == 0 and dim % 2:
            raise ModelConfigError(f"model.embed_dims[0]={dim} must be even (the stem's first conv has "
                                   f"embed_dims[0] // 2 channels)")
        hidden = int(c["mlp_ratio"][i] * dim)
        gated = hidden // chunks
        if c["gate_unit"] == "posgu" and gated % c["gamma"][i]:
            raise ModelConfigError(
                f"model.gamma[{i}]={c['gamma'][i]} does not divide the {gated} gated channels of level {i} "
                f"(embed_dims[{i}]={dim} x mlp_ratio[{i}]={c['mlp_ratio'][i]} / chunks={chunks}); "
                f"choose a gamma that divides {gated}")


def feature_sizes(cfg):
    """``[(H_i, W_i)]`` of every level of a resolved config."""
    h, w = cfg["img_size"]
    return [(h // 4 // 2 ** i, w // 4 // 2 ** i) for i in range(cfg["num_levels"])]


def default_cfg(cfg):
    """timm-style default configuration of a resolved model config: ``input_size``, ``pool_size``, ``crop_pct``,
    ``interpolation``, ``mean``, ``std``, ``num_classes``, ``first_conv``, ``classifier``, ``architecture``."""
    out = dict(DEFAULT_CFG, **PRETRAINED_CFGS.get(cfg.get("name"), {}))
    h, w = cfg["img_size"]
    last = 2 ** (cfg["num_levels"] + 1)
    out.update(architecture=cfg.get("name") or "posmlp", num_classes=cfg["num_classes"],
               input_size=(cfg["in_chans"], h, w), pool_size=(h // last, w // last))
    return out


def input_size_multiple(cfg, levels=None):
    """The smallest side ``m`` such that every side divisible by ``m`` gives feature maps that the windows of
    ``levels`` (default: all) tile: level ``i`` has stride ``4 * 2**i`` and windows of ``win_size[i]``."""
    m = 1
    for i in range(cfg["num_levels"]) if levels is None else levels:
        k = 4 * 2 ** i * cfg["win_size"][i]
        m = m * k // math.gcd(m, k)
    return m
