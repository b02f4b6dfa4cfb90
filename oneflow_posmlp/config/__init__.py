"""Training configs: YAML over schema defaults, ``--opts`` dotted overrides, validation."""
from .loader import ConfigError, apply_opts, dump_config, load_config, parse_opts, scaled_lr
from .schema import DEFAULTS

__all__ = ["ConfigError", "apply_opts", "dump_config", "load_config", "parse_opts", "scaled_lr", "DEFAULTS"]
