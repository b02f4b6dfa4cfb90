"""Fill flowvision's model registry with the PosMLP variants when ``flowvision.models`` is imported.

Kept apart from ``oneflow_posmlp.models`` so that ``import oneflow_posmlp`` imports neither OneFlow nor flowvision.
"""
import sys


class _RegisterOnImport:
    """A ``sys.meta_path`` finder that calls ``models.flowvision_registry.register`` once ``flowvision.models`` has been imported, so that
    ``import oneflow_posmlp`` stays light (no OneFlow import) and still fills flowvision's registry."""

    TARGET = "flowvision.models"

    def find_spec(self, fullname, path, target=None):
        if fullname != self.TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                loader = spec.loader
                exec_module = loader.exec_module

                def exec_then_register(module, _exec=exec_module):
                    _exec(module)
                    from .models.flowvision_registry import register

                    register()

                loader.exec_module = exec_then_register
                return spec
        return None


def install():
    """Register now if flowvision's models are loaded, else as soon as they are."""
    if _RegisterOnImport.TARGET in sys.modules:
        from .models.flowvision_registry import register

        register()
    elif not any(isinstance(f, _RegisterOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterOnImport())
