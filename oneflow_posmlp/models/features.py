"""Multi-scale features in timm's convention: which levels a ``features_only`` model returns, and ``FeatureInfo``."""
from ..config.validate import ConfigError


class FeatureInfo(list):
    """``[{num_chs, reduction, module}]`` of the returned feature maps, with timm's accessors."""

    def channels(self):
        return [f["num_chs"] for f in self]

    def reduction(self):
        return [f["reduction"] for f in self]

    def module_name(self):
        return [f["module"] for f in self]


def level_info(embed_dims):
    """One entry per level: channels, stride (4, 8, 16, 32 for 4 levels) and the module producing it."""
    return FeatureInfo(dict(num_chs=d, reduction=4 * 2 ** i, module=f"levels.{i}") for i, d in enumerate(embed_dims))


def resolve_out_indices(out_indices, num_levels):
    """Sorted, non-negative level indices; negative ones count from the last level (timm). ConfigError if out of range."""
    if out_indices is None:
        return tuple(range(num_levels))
    idx = [int(i) for i in (out_indices if isinstance(out_indices, (list, tuple)) else [out_indices])]
    bad = [i for i in idx if not -num_levels <= i < num_levels]
    if bad or not idx:
        raise ConfigError(f"out_indices {list(idx)}: the model has {num_levels} levels; give indices in "
                          f"0..{num_levels - 1} (or negative from the last)")
    return tuple(sorted({i % num_levels for i in idx}))
