"""Config loading: YAML over schema defaults, --opts overrides, errors naming the key and the fix."""
import pytest
import yaml

from oneflow_posmlp.config import ConfigError, load_config, parse_opts, scaled_lr


def write(tmp_path, doc):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_defaults_are_the_official_t_recipe():
    cfg = load_config()
    t, a = cfg["train"], cfg["aug"]
    assert (t["optimizer"], t["opt_eps"], t["weight_decay"], t["lr"]) == ("adamw", 1e-5, 0.067, 2e-3)
    assert (t["min_lr"], t["warmup_epochs"], t["warmup_lr"], t["epochs"]) == (1e-6, 10, 1e-5, 300)
    assert (a["auto_augment"], a["mixup"], a["cutmix"], a["mixup_switch_prob"]) == ("rand-m6-n3-mstd1.0-inc1", 0.5, 1.0, 0.5)
    assert (a["smoothing"], a["color_jitter"], a["crop_pct"], t["clip_grad"], t["ema_decay"]) == (0.1, 0.4, 0.9, 1.0, 0.99992)
    assert cfg["model"]["embed_dims"] == [96, 192, 384, 768]


@pytest.mark.parametrize("name", ["posmlp_t", "posmlp_s", "posmlp_b", "demo"])
def test_shipped_configs_load(name):
    cfg = load_config(f"configs/{name}.yaml")
    assert cfg["train"]["batch_size"] >= 1


def test_yaml_and_opts_override(tmp_path):
    path = write(tmp_path, {"train": {"lr": 1e-3, "batch_size": 256}, "model": {"name": "posmlp_s"}})
    cfg = load_config(path, ["train.epochs=5", "model.num_classes=10", "aug.scale=[0.5, 1.0]"])
    assert cfg["train"]["lr"] == 1e-3 and cfg["train"]["epochs"] == 5 and cfg["aug"]["scale"] == [0.5, 1.0]
    assert cfg["model"]["embed_dims"][0] == 128 and cfg["model"]["num_classes"] == 10
    assert scaled_lr(cfg) == pytest.approx(1e-3 * 256 / 512)


@pytest.mark.parametrize("opts,needle", [
    (["train.lrr=1"], "unknown config key 'train.lrr'; did you mean 'train.lr'?"),
    (["trian.lr=1"], "unknown config key 'trian'; did you mean 'train'?"),
    (["train.lr=fast"], "config key 'train.lr' must be float"),
    (["train.epochs=1.5"], "config key 'train.epochs' must be int"),
    (["train.amp=yes please"], "config key 'train.amp' must be bool"),
    (["aug.mixup_mode=elem"], "must be one of batch"),
    (["model.embed_dim=[1]"], "unknown config key 'model.embed_dim'; did you mean 'model.embed_dims'?"),
    (["model.stem_norm=GN"], "config key 'model.stem_norm' must be one of BN, LN, got 'GN'"),
    (["model.name=posmlp_x"], "unknown model name 'posmlp_x'; did you mean 'posmlp_t'? (known models: posmlp_b,"),
    (["model.win_size=[5,5,5,5]"], "do not tile"),
    (["train.batch_size=10", "train.grad_accum_steps=4"], "not divisible by train.grad_accum_steps"),
    (["train.lr"], "must look like key.sub=value"),
])
def test_bad_config_names_key_and_fix(opts, needle):
    with pytest.raises(ConfigError) as err:
        load_config(None, opts)
    assert needle in str(err.value)


def test_unknown_key_in_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'data.num_worker'; did you mean 'data.num_workers'"):
        load_config(write(tmp_path, {"data": {"num_worker": 2}}))


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_parse_opts_nests_and_parses_yaml():
    assert parse_opts(["a.b=1", "a.c=[1, 2]", "d=null"]) == {"a": {"b": 1, "c": [1, 2]}, "d": None}


def test_apply_opts_on_a_loaded_config():
    from oneflow_posmlp.config import apply_opts

    cfg = load_config("configs/posmlp_t.yaml")
    small = apply_opts(cfg, ["model.num_classes=10", "train.batch_size=64"])
    assert small["model"]["num_classes"] == 10 and small["model"]["embed_dims"] == [96, 192, 384, 768]
    assert cfg["model"]["num_classes"] == 1000 and cfg["train"]["batch_size"] == 512  # not modified
    s = apply_opts(cfg, ["model.name=posmlp_s"])  # a new name re-resolves from that registry entry
    assert s["model"]["embed_dims"] == [128, 256, 512, 1024] and s["model"]["name"] == "posmlp_s"


@pytest.mark.parametrize("name,lr,batch,drop_path", [("posmlp_t", 2e-3, 512, 0.1), ("posmlp_s", 1e-3, 480, 0.1),
                                                     ("posmlp_b", 1e-3, 512, 0.3)])
def test_shipped_recipes(name, lr, batch, drop_path):
    cfg = load_config(f"configs/{name}.yaml")
    t, a, m = cfg["train"], cfg["aug"], cfg["model"]
    assert (t["lr"], t["lr_base_batch"], t["batch_size"], m["drop_path_rate"]) == (lr, batch, batch, drop_path)
    assert (t["opt_eps"], t["weight_decay"], t["min_lr"], t["warmup_epochs"], t["warmup_lr"]) == (1e-5, 0.067, 1e-6, 10, 1e-5)
    assert (a["auto_augment"], a["mixup"], a["cutmix"], a["mixup_switch_prob"], a["smoothing"]) == \
        ("rand-m6-n3-mstd1.0-inc1", 0.5, 1.0, 0.5, 0.1)
    assert (a["crop_pct"], a["train_interpolation"], t["clip_grad"], t["clip_mode"], t["ema_decay"]) == \
        (0.9, "random", 1.0, "norm", 0.99992)
    assert m["drop_rate"] == 0.02333 and m["name"] == name
    assert scaled_lr(load_config(f"configs/{name}.yaml", ["train.batch_size=1024"])) == pytest.approx(lr * 1024 / batch)


# (as written, value): YAML 1.1 (plain PyYAML) reads the first six as strings
NUMBERS = [("1e-3", 1e-3), ("5e-4", 5e-4), ("3e5", 3e5), ("1.0e6", 1e6), ("-2E-4", -2e-4), ("+1e-2", 1e-2),
           (".5e-3", 5e-4), ("1.0e-3", 1e-3), ("0.002", 2e-3)]


@pytest.mark.parametrize("text,value", NUMBERS)
def test_numbers_as_people_write_them_work_for_float_keys_in_files_and_opts(tmp_path, text, value):
    """A float key (train.warmup_lr; for negatives the elements of the float list aug.mean) set in --opts and in a
    config file gets the number, as a float."""
    scalar = value > 0  # warmup_lr must be >= 0
    opts = [f"aug.mean=[{text}, 0.5, {text}]"] + ([f"train.warmup_lr={text}"] if scalar else [])
    path = tmp_path / "c.yaml"
    path.write_text(f"aug:\n  mean: [{text}, 0.5, {text}]\n" + (f"train:\n  warmup_lr: {text}\n" if scalar else ""))
    for cfg in (load_config(None, opts), load_config(path)):
        assert cfg["aug"]["mean"] == [value, 0.5, value] and all(type(v) is float for v in cfg["aug"]["mean"])
        if scalar:
            assert cfg["train"]["warmup_lr"] == value and type(cfg["train"]["warmup_lr"]) is float


def test_ints_stay_ints_and_non_numbers_stay_errors(tmp_path):
    cfg = load_config(None, ["train.epochs=30", "train.batch_size=256", "train.lr=2"])
    assert type(cfg["train"]["epochs"]) is int and cfg["train"]["epochs"] == 30 and cfg["train"]["lr"] == 2.0
    assert parse_opts(["a=300", "b=1e3", "c=0x10", "d=1e", "e=e5", "f=1e-3x", "g='1e-3'"]) == {
        "a": 300, "b": 1000.0, "c": 16, "d": "1e", "e": "e5", "f": "1e-3x", "g": "1e-3"}
    with pytest.raises(ConfigError) as err:  # an exponent makes a float, and an int key takes no float
        load_config(None, ["train.epochs=3e2"])
    assert str(err.value).startswith("config key 'train.epochs' must be int (like 300), got 300.0 (float)")
    for bad in ("1e-3x", "fast", "1,5e-3"):
        with pytest.raises(ConfigError) as err:
            load_config(None, [f"train.lr={bad}"])
        assert str(err.value) == f"config key 'train.lr' must be float (like 0.002), got '{bad}' (str)"
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-3x\n")
    with pytest.raises(ConfigError, match=r"config key 'train.lr' must be float \(like 0.002\), got '1e-3x' \(str\)"):
        load_config(path)


def test_a_tab_in_the_indentation_says_to_use_spaces(tmp_path):
    path = tmp_path / "tab.yaml"
    path.write_text("train:\n  epochs: 3\n\tlr: 0.1\n")
    with pytest.raises(ConfigError, match=r"is not valid YAML: .*; YAML indents with spaces, not tabs: replace the "
                                          r"tab \(line 3, column 1\) by spaces$"):
        load_config(str(path))


def test_peek_reads_one_key_before_the_config_is_loaded(tmp_path):
    from oneflow_posmlp.config.loader import peek

    path = tmp_path / "c.yaml"
    path.write_text("dist:\n  init_timeout: 7\n")
    assert peek(str(path), [], "dist.init_timeout") == 7.0
    assert peek(str(path), ["train.lr=1", "dist.init_timeout=2.5"], "dist.init_timeout") == 2.5
    assert peek("configs/demo.yaml", ["dist.init_timeout=x"], "dist.init_timeout") == 300.0  # load_config says why
    assert peek(str(tmp_path / "missing.yaml"), None, "dist.init_timeout") == 300.0


def test_peek_reads_a_built_in_config_by_its_name(tmp_path, monkeypatch):
    """``-c NAME`` names a built-in config: peek reads that file, as load_config does."""
    from oneflow_posmlp.config import loader

    (tmp_path / "mine.yaml").write_text("dist:\n  init_timeout: 7\n")
    monkeypatch.setattr(loader, "BUILTIN_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path.parent)
    assert loader.peek("mine", [], "dist.init_timeout") == 7.0
