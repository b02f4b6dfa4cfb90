"""Load a YAML config over the schema defaults, apply ``--opts key.sub=value`` overrides, validate.

A config is a nested plain dict: ``{model, data, aug, train, output, dist, log}`` (see schema.py and
docs/configuration.md); every key is checked by ``validate.py``, the model section by ``model.py``. Every error
is a :class:`ConfigError` naming the key, the value and the fix.
"""
import copy
import os
import re

import yaml

from .model import resolve_model_config
from .schema import DEFAULTS, MODEL_DEFAULTS
from .validate import ConfigError, check_known, check_value


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, plus the floats of YAML 1.2 that YAML 1.1 (PyYAML) reads as strings: an exponent
    without a dot or without a sign (``1e-3``, ``5e-4``, ``3e5``, ``1.0e6``, ``-2E-4``). Integers stay integers
    and anything else resolves as before."""


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_yaml(stream):
    """``yaml.safe_load`` with :class:`ConfigLoader`'s numbers (config files and ``--opts`` values)."""
    return yaml.load(stream, Loader=ConfigLoader)  # noqa: S506 (a SafeLoader subclass)


def _merge(base, override, where):
    """Merge ``override`` into ``base`` (in place), checking every key against ``base`` and every value's type."""
    for key, value in override.items():
        path = f"{where}.{key}" if where else str(key)
        check_known(key, base, where)
        if where == "" and key == "model":
            if not isinstance(value, dict):
                raise ConfigError(f"config key 'model' must be a mapping of model keys, got {value!r}")
            base[key] = dict(value)  # a model section replaces the default one; resolved by _finish
        elif isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{path}' must be a mapping of keys, got {value!r}")
            _merge(base[key], value, path)
        else:
            base[key] = check_value(path, _schema_default(path), value)


def _schema_default(path):
    """The schema default of a dotted key (types come from the schema, not from the value a file set)."""
    node = DEFAULTS
    for part in path.split("."):
        node = node[part]
    return node


def parse_opts(opts):
    """``["train.lr=0.1", "model.depths=[1,1,1,1]"]`` -> nested dict; values parsed as YAML by :func:`load_yaml`
    (so ``1e-3``, ``true``, ``null``, ``[1, 2]`` mean what they do in a config file; an empty value is null)."""
    out = {}
    for item in opts or []:
        if "=" not in item:
            raise ConfigError(f"--opts item '{item}' must look like key.sub=value (e.g. train.lr=1e-3)")
        path, raw = item.split("=", 1)
        parts = path.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--opts item '{item}': '{path}' is not a dotted key like train.lr")
        try:
            value = load_yaml(raw) if raw.strip() != "" else None
        except yaml.YAMLError as err:
            raise ConfigError(f"--opts {item}: cannot parse the value as YAML ({err}); quote strings") from None
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--opts {item}: '{part}' was given a value and sub-keys")
        node[parts[-1]] = value
    return out


def apply_opts(cfg, opts):
    """A new config: ``cfg`` with the ``--opts`` overrides merged and validated. Model keys override single
    model fields; a new ``model.name`` re-resolves the model from that registry entry plus the given keys."""
    cfg = copy.deepcopy(cfg)
    overrides = parse_opts(opts)
    model = overrides.pop("model", None)
    _merge(cfg, overrides, "")
    if model is not None:
        if not isinstance(model, dict):
            raise ConfigError(f"--opts model={model!r}: set model keys one by one, e.g. model.name=posmlp_s")
        if "name" in model and model["name"] != cfg["model"].get("name") and _is_resolved(cfg["model"]):
            cfg["model"] = dict(model)
        else:
            cfg["model"].update(model)
    return _finish(cfg)


def _is_resolved(model):
    return all(k in model for k in MODEL_DEFAULTS)


# The shipped recipes: package data (oneflow_posmlp/configs; the checkout's configs/ is a link to it)
BUILTIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def builtin_configs():
    """The names of the built-in configs (``demo``, ``posmlp_t``, ...), sorted (none in a package built without
    its package data)."""
    names = os.listdir(BUILTIN_DIR) if os.path.isdir(BUILTIN_DIR) else []
    return sorted(n[:-5] for n in names if n.endswith(".yaml"))


def resolve_config(path):
    """The YAML file that ``-c PATH`` means: the file ``PATH`` when there is one, else the built-in config that
    ``PATH`` names: ``NAME``, ``NAME.yaml`` or the checkout's ``configs/NAME.yaml`` (the commands in the docs,
    run outside a checkout; a folder called ``demo`` does not hide ``-c demo``). A :class:`ConfigError` lists the
    built-in names."""
    path = str(path)
    if os.path.isfile(path):
        return path
    folder, base = os.path.split(path)
    name = base[:-5] if base.endswith(".yaml") else base
    if folder in ("", "configs") and name in builtin_configs():
        return os.path.join(BUILTIN_DIR, name + ".yaml")
    if os.path.exists(path):
        return path  # a folder (or a special file): load_config's error says so
    raise ConfigError(f"config {path} not found: no such file, nor a built-in config; pass the path of a YAML file "
                      f"or a built-in name: {', '.join(builtin_configs())}")


def load_config(path=None, opts=None):
    """The validated config dict: schema defaults <- YAML file ``path`` (a path, or a built-in name:
    :func:`resolve_config`) <- ``--opts`` overrides. ``path=None`` gives the defaults (the official PosMLP-T
    recipe)."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = resolve_config(path)
        try:
            with open(path) as f:
                doc = load_yaml(f) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found; pass the path of a YAML file or a built-in name: "
                              f"{', '.join(builtin_configs())}") from None
        except IsADirectoryError:
            raise ConfigError(f"config path {path} is a directory; pass a YAML file such as configs/demo.yaml") \
                from None
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {_yaml_error(err)}") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections "
                              f"({', '.join(DEFAULTS)}), got {type(doc).__name__}")
        _merge(cfg, doc, "")
    return apply_opts(cfg, opts) if opts else _finish(cfg)


def _yaml_error(err):
    """PyYAML's message on one line, with the fix for the usual mistake: a tab in the indentation."""
    text = " ".join(str(err).split())
    if "'\\t'" in str(err):
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        text += f"; YAML indents with spaces, not tabs: replace the tab{where} by spaces"
    return text


def peek(path, opts, key):
    """The value of the dotted ``key`` as the file ``path`` and ``--opts`` set it, else its schema default, without
    loading the whole config (which may import OneFlow: ``aug.auto_augment`` is checked by flowvision). For what
    is needed before OneFlow starts (``dist.init_timeout``); anything unreadable gives the default, and the full
    :func:`load_config` reports it afterwards."""
    default = value = _schema_default(key)

    def read(source):
        try:
            node = source()
            for part in key.split("."):
                node = node[part]
            return check_value(key, default, node)
        except (OSError, yaml.YAMLError, ConfigError, KeyError, TypeError):
            return None

    def from_file():
        with open(resolve_config(path)) as f:  # -c takes a built-in config's name as well
            return load_yaml(f)

    for source in (from_file if path is not None else dict,
                   lambda: parse_opts([o for o in opts or [] if o.split("=", 1)[0].strip() == key])):
        found = read(source)
        value = value if found is None else found
    return value


def _finish(cfg):
    """Cross-key checks and the model section resolved to the complete model kwargs."""
    cfg["model"] = resolve_model_config(cfg["model"])
    t = cfg["train"]
    if t["batch_size"] % t["grad_accum_steps"]:
        raise ConfigError(f"train.batch_size {t['batch_size']} is not divisible by train.grad_accum_steps "
                          f"{t['grad_accum_steps']}; use a multiple of {t['grad_accum_steps']}")
    levels = cfg["model"]["num_levels"]
    bad = [i for i in cfg["dist"]["activation_checkpointing"] if not 0 <= i < levels]
    if bad:
        raise ConfigError(f"dist.activation_checkpointing {cfg['dist']['activation_checkpointing']}: level(s) {bad} "
                          f"do not exist; give level indices 0..{levels - 1}")
    a = cfg["aug"]
    if a["auto_augment"]:
        _check_auto_augment(a)
    return cfg


def _check_auto_augment(a):
    """Build the flowvision augmentation once so a malformed ``aug.auto_augment`` string fails at load time."""
    from ..data.transforms import _auto_augment

    try:
        _auto_augment(a["auto_augment"], (224, 224), a["mean"], a["train_interpolation"])
    except (AssertionError, ValueError, KeyError, IndexError) as err:
        raise ConfigError(f"config key 'aug.auto_augment' {a['auto_augment']!r} is not a valid timm augmentation "
                          f"string ({err or type(err).__name__}); use e.g. rand-m6-n3-mstd1.0-inc1, or '' to "
                          f"disable") from None


def dump_config(cfg):
    """The config as YAML text (keys in schema order); ``load_config`` of it gives the same config."""
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)


def scaled_lr(cfg):
    """``train.lr`` scaled linearly from ``train.lr_base_batch`` to the global ``train.batch_size``:
    ``lr * batch_size / lr_base_batch`` (the linear scaling rule, Goyal et al. 2017)."""
    t = cfg["train"]
    return t["lr"] * t["batch_size"] / t["lr_base_batch"]
