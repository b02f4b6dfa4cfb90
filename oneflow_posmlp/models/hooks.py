"""Forward hooks for the length of a ``with`` block, leaving every module exactly as it was.

OneFlow 0.9.0's ``register_forward_hook`` / ``register_forward_pre_hook`` return no handle to remove a hook
with, so :func:`forward_hooks` saves each module's hook dictionaries and puts their contents back afterwards
(the same dictionary objects: no attribute of a module is replaced, and hooks registered by others survive).
Used by the FLOP counter (:mod:`.flops`) and the benchmark's profiler (``oneflow_posmlp.bench.profile``).
"""
from contextlib import contextmanager


@contextmanager
def forward_hooks(hooks):
    """Register ``hooks``, an iterable of ``(module, pre_hook or None, post_hook or None)``, for the block.

    ``pre_hook(module, inputs)`` runs before the module's ``forward``, ``post_hook(module, inputs, output)``
    after it. On exit (also on an exception) each touched module's hooks are exactly those it had before."""
    saved = {}
    try:
        for module, pre, post in hooks:
            if id(module) not in saved:
                saved[id(module)] = (module, list(module._forward_pre_hooks.items()),
                                     list(module._forward_hooks.items()))
            if pre is not None:
                module.register_forward_pre_hook(pre)
            if post is not None:
                module.register_forward_hook(post)
        yield
    finally:
        for module, pre_items, post_items in saved.values():
            for live, items in ((module._forward_pre_hooks, pre_items), (module._forward_hooks, post_items)):
                live.clear()
                live.update(items)
