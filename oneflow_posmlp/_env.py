"""OneFlow environment defaults for CPU machines, set before ``import oneflow`` (OneFlow reads them then).

``ONEFLOW_VM_COMPUTE_ON_WORKER_THREAD=0``: by default OneFlow 0.9.0's VM scheduler thread spins while a
worker thread computes, so one process burns two cores for one core of work (OneFlow's CPU kernels are
sequential). With ``0`` the scheduler thread computes itself: the same speed at half the CPU, which leaves
the second core to a second data-parallel rank (docs/benchmark.md). Applied only on machines without an
NVIDIA device node (a CPU-only machine), only when OneFlow is not imported yet, and never over a value the
user set.
"""
import glob
import os
import sys

VM_WORKER = "ONEFLOW_VM_COMPUTE_ON_WORKER_THREAD"


def cpu_only_machine():
    """True when the machine has no NVIDIA device node (``/dev/nvidia0``, ``/dev/nvidiactl``, ...)."""
    return not glob.glob("/dev/nvidia*")


def apply_cpu_defaults(environ=None):
    """Set ``ONEFLOW_VM_COMPUTE_ON_WORKER_THREAD=0`` where it applies; returns whether it was set."""
    environ = os.environ if environ is None else environ
    if "oneflow" in sys.modules or VM_WORKER in environ or not cpu_only_machine():
        return False
    environ[VM_WORKER] = "0"
    return True
