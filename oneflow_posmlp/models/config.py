"""What a model expects of its input (timm's ``default_cfg``) and the sizes its config implies.

The ``model:`` section itself (its keys, the registry of named models, validation) is the config system's:
:mod:`oneflow_posmlp.config.model` and :mod:`oneflow_posmlp.config.schema`; its names are re-exported here.
"""
import math

from ..config.model import REGISTRY, list_models, resolve_model_config
from ..config.schema import MODEL_DEFAULTS as DEFAULTS
from ..config.validate import ConfigError

ModelConfigError = ConfigError  # deprecated alias: model errors are ConfigErrors (catch ConfigError)

__all__ = ["DEFAULTS", "DEFAULT_CFG", "PRETRAINED_CFGS", "REGISTRY", "ModelConfigError", "default_cfg",
           "feature_sizes", "input_size_multiple", "list_models", "resolve_model_config"]

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
