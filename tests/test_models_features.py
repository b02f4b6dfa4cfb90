"""Backbone conventions: num_features, default_cfg, flowvision's registry, features_only maps and feature_info."""
import numpy as np
import oneflow as flow
import pytest
import yaml
from flowvision.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from flowvision.models import ModelCreator

from oneflow_posmlp.config.schema import DEFAULTS as CONFIG_DEFAULTS
from oneflow_posmlp.data import create_eval_transform, resolve_data_config
from oneflow_posmlp.config import ConfigError
from oneflow_posmlp.models import build_model, create_model, list_models, resolve_model_config


def demo_model_cfg():
    with open("configs/demo.yaml") as f:
        return yaml.safe_load(f)["model"]


@pytest.mark.parametrize("name", list_models())
def test_flowvision_registry_creates_every_variant(name):
    assert name in ModelCreator.model_list("posmlp*")
    model = ModelCreator.create_model(name, num_classes=7)
    assert type(model).__name__ == "PosMLP" and model.num_classes == 7 and model.head.weight.shape[0] == 7
    assert model.config == resolve_model_config({"name": name, "num_classes": 7})
    assert model.default_cfg["input_size"] == (3, *model.img_size) and model.default_cfg["architecture"] == name


def test_flowvision_registry_refuses_pretrained():
    with pytest.raises(ValueError, match="no pretrained weights"):
        ModelCreator.create_model("posmlp_t", pretrained=True)


def test_default_cfg_in_timm_style(tiny_model_cfg):
    t = create_model("posmlp_t", num_classes=0)
    cfg = t.default_cfg
    assert t.pretrained_cfg is cfg and t.num_features == 768 and t.num_classes == 0
    assert (cfg["input_size"], cfg["pool_size"], cfg["crop_pct"], cfg["interpolation"]) == \
           ((3, 224, 224), (7, 7), 0.9, "bicubic")
    assert cfg["mean"] == IMAGENET_DEFAULT_MEAN and cfg["std"] == IMAGENET_DEFAULT_STD
    names = dict(t.named_modules())
    assert isinstance(names[cfg["first_conv"]], flow.nn.Conv2d) and names[cfg["first_conv"]].in_channels == 3
    t.reset_classifier(10)
    assert isinstance(dict(t.named_modules())[cfg["classifier"]], flow.nn.Linear) and cfg["num_classes"] == 10
    assert create_model("posmlp_t_384").default_cfg["crop_pct"] == 1.0
    # the training config's eval defaults are the model's (one recipe; the config may override them)
    aug = CONFIG_DEFAULTS["aug"]
    assert (aug["crop_pct"], aug["interpolation"], tuple(aug["mean"]), tuple(aug["std"])) == \
           (cfg["crop_pct"], cfg["interpolation"], cfg["mean"], cfg["std"])


def test_eval_transform_from_the_default_cfg(tiny_model_cfg):
    from PIL import Image

    model = build_model(tiny_model_cfg)
    t = create_eval_transform(model.default_cfg)
    x = t(Image.new("RGB", (100, 80), (255, 0, 0)))
    assert tuple(x.shape) == (3, 64, 64)
    assert float(x[0, 0, 0]) == pytest.approx((1 - IMAGENET_DEFAULT_MEAN[0]) / IMAGENET_DEFAULT_STD[0], rel=1e-5)
    data = resolve_data_config(model.default_cfg, dict(CONFIG_DEFAULTS["aug"], crop_pct=1.0, mean=[0.5] * 3))
    assert data["crop_pct"] == 1.0 and data["mean"] == (0.5, 0.5, 0.5) and data["input_size"] == (3, 64, 64)


def check_features(model, size, channels):
    model.eval()
    with flow.no_grad():
        feats = model(flow.randn(1, 3, size, size))
    assert [tuple(f.shape) for f in feats] == [(1, c, size // r, size // r)
                                               for c, r in zip(channels, model.feature_info.reduction())]
    return feats


def test_features_only_posmlp_t_at_224():
    model = create_model("posmlp_t", features_only=True)
    assert model.feature_info.channels() == [96, 192, 384, 768] and model.feature_info.reduction() == [4, 8, 16, 32]
    assert model.feature_info.module_name() == ["levels.0", "levels.1", "levels.2", "levels.3"]
    check_features(model, 224, [96, 192, 384, 768])
    keys = set(model.state_dict())
    assert not any(k.startswith(("head.", "norm.")) for k in keys)
    assert keys == {k for k in create_model("posmlp_t").state_dict() if not k.startswith(("head.", "norm."))}


def test_features_only_demo_model_matches_the_classifier_levels():
    cfg = demo_model_cfg()
    clf = build_model(cfg).eval()
    backbone = build_model(cfg, features_only=True, out_indices=(1, -1)).eval()
    backbone.load_state_dict({k: v for k, v in clf.state_dict().items() if k in backbone.state_dict()})
    assert backbone.feature_info.channels() == [32, 128] and backbone.feature_info.reduction() == [8, 32]
    x = flow.randn(2, 3, 32, 32)
    with flow.no_grad():
        feats = backbone(x)
        maps = [clf.patch_embed(x)]
        for level in clf.levels:
            maps.append(level(maps[-1]))
    assert [tuple(f.shape) for f in feats] == [(2, 32, 4, 4), (2, 128, 1, 1)]
    np.testing.assert_allclose(feats[0].numpy(), maps[2].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(feats[1].numpy(), maps[4].numpy(), rtol=1e-5, atol=1e-6)


def test_features_only_other_sizes_that_the_windows_tile():
    cfg = demo_model_cfg()  # windows 4/4/2/1 at strides 4/8/16/32: sides must be multiples of 32
    backbone = build_model(cfg, features_only=True)
    check_features(backbone, 64, [16, 32, 64, 128])
    with pytest.raises(ValueError, match=r"input 48x48 .* do not tile; height and width must be multiples of 32"):
        backbone(flow.randn(1, 3, 48, 48))
    only_first = build_model(cfg, features_only=True, out_indices=[0])  # level 0 alone: multiples of 16
    with flow.no_grad():
        assert tuple(only_first(flow.randn(1, 3, 48, 48))[0].shape) == (1, 16, 12, 12)
    shifted = build_model(dict(cfg, shift=True, depths=[2, 1, 1, 1]), features_only=True)
    with pytest.raises(ValueError, match="shifted windows fix the feature map sizes"):
        shifted(flow.randn(1, 3, 128, 128))


def test_features_only_argument_errors():
    with pytest.raises(ConfigError, match=r"out_indices \[4\]: the model has 4 levels"):
        create_model("posmlp_t", features_only=True, out_indices=[4])
    with pytest.raises(ValueError, match="no classifier"):
        create_model("posmlp_t", features_only=True).reset_classifier(3)
