"""OneFlow environment defaults for CPU machines, set before ``import oneflow`` (OneFlow reads them then).

``ONEFLOW_VM_COMPUTE_ON_WORKER_THREAD=0``: by default OneFlow 0.9.0's VM scheduler thread spins while a
worker thread computes, so one process burns two cores for one core of work (OneFlow's CPU kernels are
sequential). With ``0`` the scheduler thread computes itself: the same speed at half the CPU, which leaves
the second core to a second data-parallel rank (docs/benchmark.md). Applied only on machines without an
NVIDIA device node (a CPU-only machine), only when OneFlow is not imported yet, and never over a value the
user set.

``OPENBLAS_CORETYPE=Haswell``: OneFlow 0.9.0 links a static OpenBLAS (a ``DYNAMIC_ARCH`` build without
AVX-512 kernels) that does not recognise recent Xeons ("Core not found", with ``OPENBLAS_VERBOSE=2``) and
falls back to its SSE3 ``Prescott`` kernels: sgemm at 20-27 GFLOP/s on this project's 2-core machines, 45-53
with the AVX2 ``Haswell`` kernels, which every CPU with AVX2 and FMA runs. Set on CPUs with both flags (any
machine: OneFlow's CPU matmuls use it), only when OneFlow is not imported yet and the user set no core type.
numpy's OpenBLAS, if numpy is not imported yet, reads it too (here it also fell back to ``Prescott``).
"""
import glob
import os
import sys

VM_WORKER = "ONEFLOW_VM_COMPUTE_ON_WORKER_THREAD"
CORETYPE = "OPENBLAS_CORETYPE"


def cpu_only_machine():
    """True when the machine has no NVIDIA device node (``/dev/nvidia0``, ``/dev/nvidiactl``, ...)."""
    return not glob.glob("/dev/nvidia*")


def cpu_flags():
    """The CPU's feature flags (``/proc/cpuinfo``), empty where unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def apply_cpu_defaults(environ=None):
    """Set ``ONEFLOW_VM_COMPUTE_ON_WORKER_THREAD=0`` and ``OPENBLAS_CORETYPE=Haswell`` where they apply;
    returns the names set."""
    environ = os.environ if environ is None else environ
    if "oneflow" in sys.modules:
        return []
    done = []
    if VM_WORKER not in environ and cpu_only_machine():
        environ[VM_WORKER] = "0"
        done.append(VM_WORKER)
    if CORETYPE not in environ and {"avx2", "fma"} <= cpu_flags():
        environ[CORETYPE] = "Haswell"
        done.append(CORETYPE)
    return done
