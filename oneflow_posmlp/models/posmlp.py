"""PosMLP: a hierarchical vision MLP whose blocks mix tokens with positional spatial gating units."""
import numpy as np
import oneflow as flow
import oneflow.nn as nn
from flowvision.layers import trunc_normal_

from .config import default_cfg, feature_sizes, input_size_multiple, resolve_model_config
from .drop import dropout
from .features import level_info, resolve_out_indices
from .layers import PosMLPLayer, PosMLPLevel
from .norm import LayerNorm
from .patch_embed import POOL_LAYERS, ConvPatchEmbed
from .posgu import GATE_UNITS, SGU


class PosMLP(nn.Module):
    """PosMLP (Wang et al., ACM MM 2022).

    ``(B, in_chans, H, W)`` -> stem (stride 4) -> levels (each but the first halves the resolution)
    -> LayerNorm -> global average pool -> dropout -> ``head`` -> ``(B, num_classes)``.
    Build it from keyword arguments mirroring the official ones, or with :func:`build_model`.

    timm/flowvision conventions: ``num_features`` (channels into the head), ``default_cfg`` (= ``pretrained_cfg``:
    input size, mean, std, crop_pct, interpolation, ...), ``feature_info`` (channels and stride of every level),
    ``forward_features``, ``forward_head``, ``reset_classifier``. ``features_only=True`` builds a backbone whose
    forward returns the maps ``(B, C_i, H / s_i, W / s_i)`` of the levels in ``out_indices`` (strides 4, 8, 16, 32),
    without final norm and head, at any input size whose feature maps the windows tile.
    """

    def __init__(self, features_only=False, out_indices=None, **kwargs):
        super().__init__()
        if features_only:
            kwargs["num_classes"] = 0
        cfg = resolve_model_config(kwargs)
        self.config = cfg
        self.features_only = bool(features_only)
        self.out_indices = resolve_out_indices(out_indices, cfg["num_levels"])
        self.num_features = cfg["embed_dims"][-1]
        self.default_cfg = self.pretrained_cfg = default_cfg(cfg)
        info = level_info(cfg["embed_dims"])
        self.feature_info = type(info)(info[i] for i in self.out_indices) if features_only else info
        self.num_classes = cfg["num_classes"]
        self.num_levels = cfg["num_levels"]
        self.drop_rate = cfg["drop_rate"]
        self.img_size = tuple(cfg["img_size"])
        self.in_chans = cfg["in_chans"]
        dims = cfg["embed_dims"]
        norm_layer = lambda d: LayerNorm(d, eps=1e-6)  # noqa: E731
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
        # a features_only backbone has neither (timm drops them too): its state dict lacks norm.* and head.*
        self.norm = nn.Identity() if features_only else norm_layer(dims[-1])
        self.head = nn.Linear(dims[-1], self.num_classes) if self.num_classes > 0 else nn.Identity()
        self.apply(_init_weights)
        for m in self.modules():
            if isinstance(m, SGU):
                m.init_weights()

    def check_input(self, x):
        """The classifier takes ``(B, in_chans, *img_size)``; a ``features_only`` model without shifted windows
        takes any ``(B, in_chans, H, W)`` whose feature maps (up to the last returned level) the windows tile."""
        if x.ndim == 4 and x.shape[1] == self.in_chans and tuple(x.shape[2:]) == self.img_size:
            return
        shifted = any(level.shifted for level in self.levels)
        if self.features_only and not shifted and x.ndim == 4 and x.shape[1] == self.in_chans:
            m = input_size_multiple(self.config, range(self.out_indices[-1] + 1))
            if x.shape[2] % m == 0 and x.shape[3] % m == 0:
                return
            raise ValueError(
                f"PosMLP features: input {x.shape[2]}x{x.shape[3]} gives feature maps that the windows "
                f"{self.config['win_size']} do not tile; height and width must be multiples of {m} "
                f"(stride x window of every level up to {self.out_indices[-1]}): resize or pad the images")
        sizes = ""
        if self.features_only and shifted:
            sizes = " (shifted windows fix the feature map sizes, so a features_only model takes img_size only)"
        raise ValueError(
            f"PosMLP expects input of shape (B, {self.in_chans}, {self.img_size[0]}, {self.img_size[1]}), "
            f"got {tuple(x.shape)}; resize the images to model.img_size or build the model with "
            f"img_size={list(x.shape[2:]) if x.ndim == 4 else '...'}{sizes}")

    def forward_levels(self, x):
        """``(B, in_chans, H, W)`` -> the maps ``(B, C_i, H / 2**(i+2), W / 2**(i+2))`` of ``out_indices``."""
        self.check_input(x)
        x = self.patch_embed(x)
        out = []
        for i, level in enumerate(self.levels):
            if i > self.out_indices[-1]:
                break
            x = level(x)
            if i in self.out_indices:
                out.append(x)
        return out

    def forward_features(self, x):
        """``(B, in_chans, H, W) -> (B, C_last, H/32, W/32)`` (for 4 levels), after the final LayerNorm."""
        self.check_input(x)
        x = self.levels(self.patch_embed(x))
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward_head(self, x):
        """``(B, C, h, w) -> (B, num_classes)``."""
        x = x.mean(dim=(2, 3))
        x = dropout(x, self.drop_rate, self.training)
        return self.head(x)

    def forward(self, x):
        if self.features_only:
            return self.forward_levels(x)
        return self.forward_head(self.forward_features(x))

    def get_classifier(self):
        return self.head

    def reset_classifier(self, num_classes):
        """Replace the head, e.g. to fine-tune on another label set."""
        if self.features_only:
            raise ValueError("a features_only PosMLP has no classifier; build it without features_only")
        self.num_classes = num_classes
        self.config["num_classes"] = num_classes
        self.default_cfg["num_classes"] = num_classes
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


BACKBONE_KWARGS = ("features_only", "out_indices")


def build_model(model_cfg=None, **overrides):
    """A :class:`PosMLP` from a config ``model:`` section (dict); ``name`` picks a registry entry.

    ``features_only=True`` (with ``out_indices``) builds the multi-scale backbone (see :class:`PosMLP`).
    """
    backbone = {k: overrides.pop(k) for k in BACKBONE_KWARGS if k in overrides}
    return PosMLP(**resolve_model_config(model_cfg, **overrides), **backbone)


def create_model(name, weights=None, **overrides):
    """A registered model (``posmlp_t``, ``posmlp_s``, ``posmlp_b``, ``posmlp_t_384``) with overrides.

    ``weights``: a ``.safetensors`` file of ``tools/convert_torch_weights.py`` (or a training checkpoint
    directory, read safely) loaded strictly; every missing, unexpected or mismatched key is an error. With a
    ``num_classes`` override the classifier may differ: it is then left freshly initialised (fine-tuning); a
    ``features_only`` backbone takes the weights of a classifier, less its final norm and head. Weights of other
    windows (e.g. ``posmlp_t``'s 14-14-14-7 into ``posmlp_t_384``'s 12-12-12-12) are carried over
    (:mod:`oneflow_posmlp.checkpoint.transfer`: window buffers rebuilt, positional tables resized bicubically,
    each kind logged at WARNING; the report is ``model.weights_transfer``).
    The weights' metadata (``model``, ``classes``, ...) are kept as ``model.weights_meta``. The loading is
    :func:`oneflow_posmlp.checkpoint.load_pretrained`, the one every tool uses.
    """
    model = build_model({"name": name}, **overrides)
    if weights is not None:
        from ..checkpoint.load import load_pretrained

        load_pretrained(model, weights, allow_head_mismatch="num_classes" in overrides,
                        head_fix="pass num_classes={n} to create_model (another num_classes: a fresh classifier)")
    return model
