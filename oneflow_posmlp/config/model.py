"""The ``model:`` section: the registry of named models and the complete, validated model keyword set.

A config ``model:`` section (or ``create_model(name, **overrides)``) is a dict whose keys mirror the official
``PosMLP(...)`` keyword arguments (``schema.MODEL_DEFAULTS``); ``name`` picks a :data:`REGISTRY` entry whose
fields the other keys override. :func:`resolve_model_config` checks every key through the schema
(``validate.py``) and the rules between keys (:func:`check_model_geometry`), and returns the complete keyword
set. No OneFlow here: the tools list the registry in their ``--help``.
"""
import copy

from .schema import MODEL_DEFAULTS, PER_LEVEL
from .validate import ConfigError, check_known, check_section, check_value, did_you_mean

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

ALIASES = {"windows": "win_size"}  # the official YAML's model_hyper spells win_size "windows"


def list_models():
    """The registered model names, sorted."""
    return sorted(REGISTRY)


def resolve_model_config(model_cfg=None, **overrides):
    """Validated, complete model kwargs (a new dict, with ``name``) from a config ``model:`` section.

    Raises :class:`ConfigError` for an unknown key or name, a value of the wrong type or out of its range,
    wrong lengths, or sizes that do not fit.
    """
    cfg = dict(model_cfg or {})
    cfg.update(overrides)
    for old, new in ALIASES.items():
        if old in cfg:
            if new in cfg and cfg[new] != cfg[old]:
                raise ConfigError(f"model: both '{old}' and '{new}' given; keep only '{new}'")
            cfg[new] = cfg.pop(old)
    name = cfg.pop("name", None)
    resolved = copy.deepcopy(MODEL_DEFAULTS)
    if name is not None:
        if name not in REGISTRY:
            raise ConfigError(f"unknown model name '{name}'{did_you_mean(name, REGISTRY)} (known models: "
                              f"{', '.join(list_models())})")
        resolved.update(copy.deepcopy(REGISTRY[name]))
    for key in cfg:
        check_known(key, ["name", *MODEL_DEFAULTS], "model")
    resolved.update(cfg)
    _expand(resolved)
    check_section("model", resolved, MODEL_DEFAULTS)
    check_model_geometry(resolved)
    resolved["name"] = name
    return resolved


def _expand(c):
    """The short forms: an int ``img_size`` is a square, a single number a per-level key's value at every level."""
    if isinstance(c["img_size"], int) and not isinstance(c["img_size"], bool):
        c["img_size"] = [c["img_size"]] * 2
    n = c["num_levels"] = check_value("model.num_levels", MODEL_DEFAULTS["num_levels"], c["num_levels"])
    for key in PER_LEVEL:
        if isinstance(c[key], (int, float)) and not isinstance(c[key], bool):
            c[key] = [c[key]] * n


def check_model_geometry(c):
    """The rules between model keys (``c`` checked key by key): one value per level, windows that tile every
    level's feature map, channel counts the downsampling convs and the PoSGU groups can split."""
    n, img, chunks = c["num_levels"], c["img_size"], c["chunks"]
    for key in PER_LEVEL:
        if len(c[key]) != n:
            raise ConfigError(f"model.{key} has {len(c[key])} entries but num_levels is {n}; "
                              f"give one value per level")
    if c["gate_unit"] == "posgu" and chunks not in (1, 2):
        raise ConfigError(f"model.chunks must be 1 or 2 for PoSGU, got {chunks!r}")
    if c["gate_unit"] == "sgu" and chunks < 2:
        raise ConfigError(f"model.chunks must be >= 2 for the SGU baseline, got {chunks!r}")
    for i in range(n):
        h, w = img[0] // 4 // 2 ** i, img[1] // 4 // 2 ** i
        exact = img[0] % (4 * 2 ** i) == 0 and img[1] % (4 * 2 ** i) == 0
        win = c["win_size"][i]
        if not exact or h % win or w % win:
            raise ConfigError(
                f"model.img_size {img[0]}x{img[1]}: level {i} works on a {img[0] / 4 / 2 ** i:g}x"
                f"{img[1] / 4 / 2 ** i:g} feature map (stride {4 * 2 ** i}), which windows of "
                f"{win}x{win} (model.win_size[{i}]) do not tile; use an img_size that is a multiple of "
                f"{4 * 2 ** i * win} or a window size dividing the feature map")
        dim = c["embed_dims"][i]
        if i > 0 and c["pool_layer"] == "conv" and dim % c["embed_dims"][i - 1]:
            raise ConfigError(
                f"model.embed_dims {c['embed_dims']}: the depthwise downsampling conv of level {i} "
                f"(groups = {c['embed_dims'][i - 1]}) cannot map {c['embed_dims'][i - 1]} to {dim} channels; "
                f"make embed_dims[{i}] a multiple of embed_dims[{i - 1}] or use pool_layer: merging")
        if i == 0 and dim % 2:
            raise ConfigError(f"model.embed_dims[0]={dim} must be even (the stem's first conv has "
                              f"embed_dims[0] // 2 channels)")
        hidden = int(c["mlp_ratio"][i] * dim)
        gated = hidden // chunks
        if c["gate_unit"] == "posgu" and gated % c["gamma"][i]:
            raise ConfigError(
                f"model.gamma[{i}]={c['gamma'][i]} does not divide the {gated} gated channels of level {i} "
                f"(embed_dims[{i}]={dim} x mlp_ratio[{i}]={c['mlp_ratio'][i]} / chunks={chunks}); "
                f"choose a gamma that divides {gated}")
