"""Registry, parameter counts, state-dict manifest of the official models, and bad configurations."""
import json

import numpy as np
import oneflow as flow
import pytest

from conftest import REFERENCE
from oneflow_posmlp.config import ConfigError
from oneflow_posmlp.models import build_model, create_model, list_models, resolve_model_config


def _count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def manifest():
    return json.loads((REFERENCE / "state_dict_manifest.json").read_text())


def test_registry_names():
    assert list_models() == ["posmlp_b", "posmlp_s", "posmlp_t", "posmlp_t_384"]


@pytest.mark.parametrize("name,official", [("posmlp_t", "PosMLP_T14_224"), ("posmlp_s", "PosMLP_S14_224")])
def test_state_dict_matches_official_manifest(name, official, manifest):
    ref = manifest[official]
    sd = create_model(name).state_dict()
    assert list(sd) == list(ref["state_dict"])  # same keys in the same order
    for key, tensor in sd.items():
        assert list(tensor.shape) == ref["state_dict"][key], key
        assert str(tensor.dtype).replace("oneflow.", "") == ref["dtypes"][key], key
    buffers = {k for k, _ in create_model(name).named_buffers()}
    assert buffers == set(ref["buffers"])


@pytest.mark.parametrize("name,count", [("posmlp_t", 20_925_538), ("posmlp_s", 36_816_450)])
def test_parameter_counts_equal_official(name, count, manifest):
    assert _count(create_model(name)) == count


def test_posmlp_b_is_the_82m_model():
    # The official README lists PosMLP-B with 82M parameters (embed dims 192-384-768-1536).
    assert _count(create_model("posmlp_b")) == 81_976_834


def test_posmlp_t_384_runs_at_384():
    cfg = resolve_model_config({"name": "posmlp_t_384"})
    assert cfg["img_size"] == [384, 384] and cfg["win_size"] == [12, 12, 12, 12]


def test_config_section_overrides_registry_entry(tiny_model_cfg):
    cfg = resolve_model_config({"name": "posmlp_t", "num_classes": 10, "windows": [7, 7, 7, 7]})
    assert cfg["embed_dims"] == [96, 192, 384, 768] and cfg["num_classes"] == 10
    assert cfg["win_size"] == [7, 7, 7, 7]  # the official YAML spelling "windows" is accepted
    model = build_model(dict(tiny_model_cfg, quadratic=False, pos_only=False))
    assert model.config["quadratic"] is False
    assert "levels.0.encoder.0.gate_unit.token_proj_n_weight" in model.state_dict()


def test_sgu_baseline_and_patch_merging_build_and_run(tiny_model_cfg):
    model = build_model(dict(tiny_model_cfg, gate_unit="sgu", pool_layer="merging"))
    keys = model.state_dict().keys()
    assert "levels.0.encoder.0.gate_unit.proj_list.0.weight" in keys
    assert "levels.1.pool.reduction.weight" in keys
    out = model(flow.randn(2, 3, 64, 64))
    assert tuple(out.shape) == (2, 5)


@pytest.mark.parametrize("overrides,needle", [
    ({"img_size": 200}, "img_size 200x200"),
    ({"win_size": [7, 4, 4, 2]}, "win_size[0]"),
    ({"embed_dims": [8, 12, 32, 64]}, "embed_dims[1] a multiple of embed_dims[0]"),
    ({"gamma": [3, 4, 8, 16]}, "gamma[0]=3 does not divide the 16 gated channels"),
    ({"depths": [1, 1, 1]}, "depths has 3 entries but num_levels is 4"),
    ({"stem_norm": "GN"}, "config key 'model.stem_norm' must be one of BN, LN, got 'GN'"),
    ({"chunks": 3}, "chunks must be 1 or 2"),
    ({"gate_unit": "sgu", "chunks": 1}, "model.chunks must be >= 2 for the SGU baseline, got 1"),
    ({"embed_dim": [8, 16, 32, 64]}, "unknown config key 'model.embed_dim'; did you mean 'model.embed_dims'?"),
    ({"name": "posmlp_x"}, "unknown model name 'posmlp_x'; did you mean 'posmlp_t'?"),
    # checked through the schema (config/schema.py), as every other section
    ({"win_size": [0, 4, 4, 2]}, "config key 'model.win_size' must hold ints >= 1, got 0 at position 0"),
    ({"depths": [1, 1.5, 1, 1]}, "config key 'model.depths' must hold ints, got 1.5 at position 1"),
    ({"img_size": [64, 64, 3]}, "config key 'model.img_size' must be a list of 2 numbers, got [64, 64, 3]"),
    ({"quadratic": "yes"}, "config key 'model.quadratic' must be bool (true/false) (like True), got 'yes' (str)"),
    ({"num_levels": 0}, "config key 'model.num_levels' must be >= 1, got 0"),
    ({"drop_path_rate": 1.0}, "config key 'model.drop_path_rate' must be >= 0.0 and < 1.0, got 1.0"),
    ({"mlp_ratio": [4, 4, 0, 2]}, "config key 'model.mlp_ratio' must hold numbers > 0, got 0 at position 2"),
])
def test_bad_config_is_a_clear_error_at_construction(tiny_model_cfg, overrides, needle):
    with pytest.raises(ConfigError) as err:
        build_model(dict(tiny_model_cfg, **overrides))
    assert needle in str(err.value)


def test_create_model_errors_are_config_errors_and_model_config_error_is_its_alias():
    from oneflow_posmlp.models import ModelConfigError

    assert ModelConfigError is ConfigError  # kept for code that catches the old name
    with pytest.raises(ConfigError, match="unknown config key 'model.embed_dim'; did you mean 'model.embed_dims'"):
        create_model("posmlp_t", embed_dim=[8, 16, 32, 64])


def test_short_forms_expand_and_numbers_keep_their_type(tiny_model_cfg):
    cfg = resolve_model_config(dict(tiny_model_cfg, img_size=64, gamma=2, mlp_ratio=1.5, drop_rate=0))
    assert cfg["img_size"] == [64, 64] and cfg["gamma"] == [2, 2, 2, 2]
    assert cfg["mlp_ratio"] == [1.5] * 4 and cfg["drop_rate"] == 0.0 and isinstance(cfg["drop_rate"], float)
    assert resolve_model_config(cfg) == cfg  # a resolved config resolves to itself
    assert resolve_model_config({"name": "posmlp_t"})["mlp_ratio"] == [4, 4, 4, 2]  # ints stay ints


def test_wrong_input_shape_names_expected_shape(tiny_model_cfg):
    model = build_model(tiny_model_cfg)
    with pytest.raises(ValueError, match=r"expects input of shape \(B, 3, 64, 64\), got \(2, 3, 56, 56\)"):
        model(flow.randn(2, 3, 56, 56))
    with pytest.raises(ValueError, match="got \\(2, 1, 64, 64\\)"):
        model(flow.randn(2, 1, 64, 64))


def test_drop_path_rates_increase_linearly(tiny_model_cfg):
    model = build_model(dict(tiny_model_cfg, drop_path_rate=0.3))
    rates = [b.drop_path.drop_prob if hasattr(b.drop_path, "drop_prob") else 0.0
             for lvl in model.levels for b in lvl.encoder]
    np.testing.assert_allclose(rates, np.linspace(0, 0.3, 4), rtol=1e-6)
