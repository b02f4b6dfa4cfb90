"""Load a YAML config over the schema defaults, apply ``--opts key.sub=value`` overrides, validate."""
import copy
import difflib

import yaml

from .schema import CHOICES, DEFAULTS, NULLABLE


class ConfigError(ValueError):
    """An invalid config; the message names the key and how to fix it."""


def _nearest(key, choices):
    close = difflib.get_close_matches(key, list(choices), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


def _merge(base, override, where):
    for key, value in override.items():
        path = f"{where}.{key}" if where else key
        if key not in base:
            raise ConfigError(f"unknown config key '{path}'{_nearest(key, base).replace(chr(39), chr(39) + (where + '.' if where else ''), 1)} (valid keys in "
                              f"{where or 'the top level'}: {', '.join(base)})")
        if where == "" and key == "model":
            if not isinstance(value, dict):
                raise ConfigError("config key 'model' must be a mapping")
            base[key] = dict(value)  # a model section replaces the default one; validated by the model
        elif isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{path}' must be a mapping of keys, got {value!r}")
            _merge(base[key], value, path)
        else:
            base[key] = _check_type(path, base[key], value)


def _check_type(path, default, value):
    section, _, key = path.partition(".")
    if default is None:
        want = NULLABLE.get((section, key))
        if value is None or want is None or isinstance(value, want):
            return value
        raise ConfigError(f"config key '{path}' must be {want.__name__} or null, got {value!r}")
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, list):
        ok = isinstance(value, (list, tuple))
        value = list(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(f"config key '{path}' must be {type(default).__name__} (like {default!r}), got {value!r}")
    choices = CHOICES.get((section, key))
    if choices and value not in choices:
        raise ConfigError(f"config key '{path}' must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def parse_opts(opts):
    """``["train.lr=0.1", "model.depths=[1,1,1,1]"]`` -> nested dict (values parsed as YAML)."""
    out = {}
    for item in opts or []:
        if "=" not in item:
            raise ConfigError(f"--opts item '{item}' must look like key.sub=value")
        path, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as err:
            raise ConfigError(f"--opts {item}: cannot parse the value ({err})") from None
        node = out
        parts = path.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def apply_opts(cfg, opts):
    """Merge ``--opts`` into an already loaded config (model keys override, not replace)."""
    cfg = copy.deepcopy(cfg)
    overrides = parse_opts(opts)
    model = overrides.pop("model", None)
    _merge(cfg, overrides, "")
    if model:
        cfg["model"].update(model)
    return _finish(cfg)


def load_config(path=None, opts=None):
    """The validated config dict: schema defaults <- YAML file <- ``--opts`` overrides."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        try:
            with open(path) as f:
                doc = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found; pass -c configs/<name>.yaml") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
        _merge(cfg, doc, "")
    return apply_opts(cfg, opts) if opts else _finish(cfg)


def _finish(cfg):
    from ..models import ModelConfigError, resolve_model_config

    try:
        cfg["model"] = resolve_model_config(cfg["model"])
    except ModelConfigError as err:
        raise ConfigError(str(err)) from None
    t = cfg["train"]
    for key in ("epochs", "batch_size", "grad_accum_steps", "lr_base_batch"):
        if t[key] < 1:
            raise ConfigError(f"config key 'train.{key}' must be >= 1, got {t[key]}")
    if t["batch_size"] % t["grad_accum_steps"]:
        raise ConfigError(f"train.batch_size {t['batch_size']} is not divisible by train.grad_accum_steps "
                          f"{t['grad_accum_steps']}")
    return cfg


def dump_config(cfg):
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)


def scaled_lr(cfg):
    """``train.lr`` scaled linearly from ``train.lr_base_batch`` to the global ``train.batch_size``."""
    t = cfg["train"]
    return t["lr"] * t["batch_size"] / t["lr_base_batch"]
