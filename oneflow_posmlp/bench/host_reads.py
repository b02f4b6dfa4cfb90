"""Counting host reads: every time Python asks a OneFlow tensor for its values (``numpy()``, ``item()``,
``tolist()``, ``float(t)``, ``int(t)``, ``bool(t)``) the host waits for the device to reach that tensor. The
benchmark and the tests count them per update with :class:`HostReads`.

Not counted: the NumPy views of the CPU kernels (``cpu_kernels/``, the GELU), which run on CPU tensors only
(never on CUDA, where a read would make the host wait)."""
import os
import sys

import oneflow as flow

CPU_ONLY = os.path.join("oneflow_posmlp", "cpu_kernels", "")

READS = ("numpy", "item", "tolist", "__float__", "__int__", "__bool__", "__index__")


class HostReads:
    """``with HostReads() as reads: ...`` counts the host reads of tensors made in the block (``reads.count``);
    a read that calls another (``float(t)`` calling ``t.item()``) counts once. ``reads.where`` lists the
    method of each."""

    def __init__(self):
        self.count = 0
        self.where = []
        self._saved = {}
        self._depth = 0

    def _wrap(self, name, method):
        def counted(tensor, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if self._depth == 0 and CPU_ONLY not in caller:
                self.count += 1
                self.where.append(name)
            self._depth += 1
            try:
                return method(tensor, *args, **kwargs)
            finally:
                self._depth -= 1
        return counted

    def __enter__(self):
        for name in READS:
            method = getattr(flow.Tensor, name, None)
            if method is not None:
                self._saved[name] = method
                setattr(flow.Tensor, name, self._wrap(name, method))
        return self

    def __exit__(self, *exc):
        for name, method in self._saved.items():
            setattr(flow.Tensor, name, method)
        self._saved = {}
