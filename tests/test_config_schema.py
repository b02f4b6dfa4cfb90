"""The config schema: defaults valid, constraints enforced with messages naming key, value and fix."""
import pytest
import yaml

from oneflow_posmlp.config import DEFAULTS, MODEL_DEFAULTS, ConfigError, dump_config, load_config
from oneflow_posmlp.config.schema import CHOICES, LENGTHS, NULLABLE, PER_LEVEL, RANGES


def test_every_constrained_key_exists_in_the_defaults():
    for table in (CHOICES, LENGTHS, NULLABLE, RANGES):
        for section, key in table:
            assert key in (MODEL_DEFAULTS if section == "model" else DEFAULTS[section]), (section, key)
    assert set(PER_LEVEL) <= set(MODEL_DEFAULTS)


def test_defaults_satisfy_their_own_constraints():
    cfg = load_config()
    assert cfg["train"]["clip_mode"] == "norm" and cfg["dist"]["zero_stage"] == 0
    assert cfg["dist"]["activation_checkpointing"] == [] and cfg["aug"]["vflip"] == 0.0


@pytest.mark.parametrize("opts,needle", [
    (["aug.hflip=1.5"], "config key 'aug.hflip' must be >= 0.0 and <= 1.0, got 1.5"),
    (["train.lr=0"], "config key 'train.lr' must be > 0"),
    (["aug.crop_pct=0"], "config key 'aug.crop_pct' must be > 0"),
    (["train.grad_accum_steps=0"], "'train.grad_accum_steps' must be >= 1"),
    (["dist.data_parallel=-1"], "'dist.data_parallel' must be >= 0"),
    (["aug.scale=[0.5]"], "'aug.scale' must be a list of 2 numbers, got [0.5]"),
    (["aug.mean=[0.5, 0.5, x]"], "'aug.mean' must hold floats, got 'x' at position 2"),
    (["dist.zero_stage=4"], "'dist.zero_stage' must be one of 0, 1, 2, 3, got 4"),
    (["dist.device=tpu"], "must be one of cpu, cuda"),
    (["aug.mixup_mode=pair"], "np.bool"),
    (["train.clip_mode=agc"], "clips by global norm"),
    (["aug.train_interpolation=lanczos"], "one of random, bilinear, bicubic, nearest"),
    (["dist.activation_checkpointing=[0, 4]"], "level(s) [4] do not exist; give level indices 0..3"),
    (["dist.activation_checkpointing=[0.5]"], "must hold ints"),
    (["aug.auto_augment=rand-q9"], "not a valid timm augmentation string"),
    (["data.root=5"], "config key 'data.root' must be str or null, got 5 (int)"),
    (["train.epochs=[1]"], "config key 'train.epochs' must be int (like 300), got [1] (list)"),
    (["train"], "must look like key.sub=value"),
    (["train..lr=1"], "is not a dotted key"),
    (["model=3"], "set model keys one by one"),
    (["train=3"], "config key 'train' must be a mapping"),
])
def test_constraint_errors_name_key_value_and_fix(opts, needle):
    with pytest.raises(ConfigError) as err:
        load_config(None, opts)
    assert needle in str(err.value)


def test_ints_become_floats_and_tuples_lists():
    cfg = load_config(None, ["train.lr=1", "aug.scale=[1, 1]", "train.opt_betas=[0, 1]"])
    assert cfg["train"]["lr"] == 1.0 and isinstance(cfg["train"]["lr"], float)
    assert cfg["aug"]["scale"] == [1.0, 1.0] and all(isinstance(v, float) for v in cfg["aug"]["scale"])


@pytest.mark.parametrize("name", ["demo", "posmlp_t", "posmlp_s", "posmlp_b"])
def test_dump_then_load_round_trips(tmp_path, name):
    cfg = load_config(f"configs/{name}.yaml")
    path = tmp_path / "dumped.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg
    assert list(yaml.safe_load(dump_config(cfg))) == list(DEFAULTS)  # sections in schema order
