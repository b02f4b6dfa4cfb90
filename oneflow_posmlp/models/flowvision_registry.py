"""The PosMLP variants in flowvision's model registry: after ``import oneflow_posmlp.models``,
``flowvision.models.ModelCreator.create_model("posmlp_t", **kwargs)`` builds them (``model_list("posmlp*")``
lists them). The entry points take the keyword arguments of :func:`oneflow_posmlp.models.create_model`
(``num_classes``, ``features_only``, ``out_indices``, ...). No weights are hosted, so ``pretrained=True`` is
refused; load weights from a file with ``create_model(name, weights=PATH)`` (flowvision's own
``checkpoint=`` argument unpickles the file with ``flow.load``: use it only for files you trust).
"""
from .config import REGISTRY

model_urls = {name: None for name in REGISTRY}  # read by flowvision's register_model ("pretrained: false")


def _entrypoint(name):
    def entry(pretrained=False, **kwargs):
        if pretrained:
            raise ValueError(f"{name}: no pretrained weights are downloadable; convert the official checkpoint "
                             f"(tools/convert_torch_weights.py) and pass weights=PATH")
        from .posmlp import create_model

        return create_model(name, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = __name__
    entry.__doc__ = f"PosMLP ``{name}`` (oneflow_posmlp.config.model.REGISTRY['{name}'])."
    return entry


ENTRYPOINTS = {name: _entrypoint(name) for name in REGISTRY}
globals().update(ENTRYPOINTS)


def register():
    """Add every variant to ``flowvision.models.ModelCreator`` (idempotent)."""
    from flowvision.models import ModelCreator

    for fn in ENTRYPOINTS.values():
        ModelCreator.register_model(fn)
