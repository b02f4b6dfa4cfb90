"""PosMLP models: ``create_model(name)``, ``build_model(model_cfg)``, the PoSGU family of gating units.

Importing this package registers the variants in flowvision's ``ModelCreator`` (as timm's model modules
register theirs): ``flowvision.models.ModelCreator.create_model("posmlp_t")`` then builds them.

A bad model configuration is a :class:`oneflow_posmlp.config.ConfigError` (``ModelConfigError`` is a deprecated
alias of it)."""
from .config import DEFAULTS, REGISTRY, ModelConfigError, list_models, resolve_model_config
from .layers import PosMLPLayer, PosMLPLevel
from .patch_embed import ConvPatchEmbed, ConvPatchMerging, PatchMerging
from .posgu import SGU, PoSGU
from .posmlp import PosMLP, build_model, create_model
from .token_mixing import GQPE, LRPE, group_mix
from .flowvision_registry import register as _register_in_flowvision

_register_in_flowvision()

__all__ = [
    "DEFAULTS", "REGISTRY", "ModelConfigError", "list_models", "resolve_model_config", "PosMLPLayer",
    "PosMLPLevel", "ConvPatchEmbed", "ConvPatchMerging", "PatchMerging", "SGU", "PoSGU", "PosMLP",
    "build_model", "create_model", "GQPE", "LRPE", "group_mix",
]
