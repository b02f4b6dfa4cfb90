"""PosMLP: a hierarchical vision MLP whose blocks mix tokens with positional spatial gating units."""
import numpy as np
import oneflow as flow
import oneflow.nn as nn
from flowvision.layers import trunc_normal_

from .config import feature_sizes, resolve_model_config
from .layers import PosMLPLayer, PosMLPLevel
from .norm import LayerNorm
from .patch_embed import POOL_LAYERS, ConvPatchEmbed
from .posgu import GATE_UNITS, SGU


class PosMLP(nn.Module):
    """PosMLP (Wang et al., ACM MM 2022).

    ``(B, in_chans, H, W)`` -> stem (stride 4) -> levels (each but the first halves the resolution)
    -> LayerNorm -> global average pool -> dropout -> ``head`` -> ``(B, num_classes)``.
    Build it from keyword arguments mirroring the official ones, or with :func:`build_model`.
    """

    def __init__(self, **kwargs):
        super().__init__()
        cfg = resolve_model_config(kwargs)
        self.config = cfg
        self.num_classes = cfg["num_classes"]
        self.num_levels = cfg["num_levels"]
        self.drop_rate = cfg["drop_rate"]
        self.img_size = tuple(cfg["img_size"])
        self.in_chans = cfg["in_chans"]
        dims = cfg["embed_dims"]
        norm_layer = lambda d: LayerNorm(d, eps=1e-6)  # noqa: E731  (fast on CPU: models/norm.py)
        gate_unit = GATE_UNITS[cfg["gate_unit"]]
        pool_layer = POOL_LAYERS[cfg["pool_layer"]]
        gate_kwargs = dict(quadratic=cfg["quadratic"], pos_only=cfg["pos_only"], generalized=cfg["generalized"],
                           symmetric=cfg["symmetric"], absolute_bias=cfg["absolute_bias"])

        self.patch_embed = ConvPatchEmbed(in_chans=cfg["in_chans"], out_chan=dims[0], stem_norm=cfg["stem_norm"])
        dp_rates = np.linspace(0, cfg["drop_path_rate"], sum(cfg["depths"])).tolist()
        levels, layer_idx = [], 0
        for i, (depth, size) in enumerate(zip(cfg["depths"], feature_sizes(cfg))):
            win = cfg["win_size"][i]
            blocks = []
            for j in range(depth):
                # Swin-style alternation: odd blocks shift by half a window, where the map has several windows.
                shift = win // 2 if cfg["shift"] and j % 2 == 1 and min(size) > win else 0
                blocks.append(PosMLPLayer(
                    dims[i], win, gate_unit, chunks=cfg["chunks"], mlp_ratio=cfg["mlp_ratio"][i],
                    drop=cfg["drop_rate"], drop_path=dp_rates[layer_idx + j], norm_layer=norm_layer,
                    act_layer=nn.GELU, layer_idx=layer_idx + j, shift_size=shift, feature_size=size,
                    gamma=cfg["gamma"][i], **gate_kwargs))
            pool = None if i == 0 else pool_layer(dims[i - 1], dims[i], downsample_norm=cfg["downsample_norm"])
            levels.append(PosMLPLevel(blocks, win, pool))
            layer_idx += depth
        self.levels = nn.Sequential(*levels)
        self.norm = norm_layer(dims[-1])
        self.head = nn.Linear(dims[-1], self.num_classes) if self.num_classes > 0 else nn.Identity()
        self.apply(_init_weights)
        for m in self.modules():
            if isinstance(m, SGU):
                m.init_weights()

    def check_input(self, x):
        if x.ndim != 4 or x.shape[1] != self.in_chans or tuple(x.shape[2:]) != self.img_size:
            raise ValueError(
                f"PosMLP expects input of shape (B, {self.in_chans}, {self.img_size[0]}, {self.img_size[1]}), "
                f"got {tuple(x.shape)}; resize the images to model.img_size or build the model with "
                f"img_size={list(x.shape[2:]) if x.ndim == 4 else '...'}")

    def forward_features(self, x):
        """``(B, in_chans, H, W) -> (B, C_last, H/32, W/32)`` (for 4 levels), after the final LayerNorm."""
        self.check_input(x)
        x = self.levels(self.patch_embed(x))
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward_head(self, x):
        """``(B, C, h, w) -> (B, num_classes)``."""
        x = x.mean(dim=(2, 3))
        if self.drop_rate > 0.0:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes):
        """Replace the head, e.g. to fine-tune on another label set."""
        self.num_classes = num_classes
        self.config["num_classes"] = num_classes
        dim = self.norm.weight.shape[0]
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            _init_weights(self.head)


def _init_weights(m):
    """As the official ``PosMLP._init_weights``: truncated normal (std .02) for linear and conv weights,
    zero biases, unit/zero affine norms."""
    if isinstance(m, (nn.Linear, nn.Conv2d)):
        trunc_normal_(m.weight, std=0.02, a=-2, b=2)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def build_model(model_cfg=None, **overrides):
    """A :class:`PosMLP` from a config ``model:`` section (dict); ``name`` picks a registry entry."""
    return PosMLP(**resolve_model_config(model_cfg, **overrides))


def create_model(name, **overrides):
    """A registered model (``posmlp_t``, ``posmlp_s``, ``posmlp_b``, ``posmlp_t_384``) with overrides."""
    return build_model({"name": name}, **overrides)
