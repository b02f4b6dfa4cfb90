"""Configs: one schema (``schema.py``, the ``model:`` section included), one validator and error type
(``validate.py``: :class:`ConfigError`), the registry of named models (``model.py``), and the loader (``loader.py``:
YAML over the schema defaults, ``--opts`` dotted overrides)."""
from .loader import apply_opts, builtin_configs, dump_config, load_config, parse_opts, resolve_config, scaled_lr
from .model import REGISTRY, list_models, resolve_model_config
from .schema import DEFAULTS, MODEL_DEFAULTS
from .validate import ConfigError

__all__ = ["ConfigError", "apply_opts", "builtin_configs", "dump_config", "load_config", "parse_opts", "resolve_config",
           "scaled_lr", "DEFAULTS",
           "MODEL_DEFAULTS", "REGISTRY", "list_models", "resolve_model_config"]
