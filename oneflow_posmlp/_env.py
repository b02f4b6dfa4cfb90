"""Process settings OneFlow reads when it starts, set by the command-line tools (never by ``import oneflow_posmlp``).

:func:`prepare_process`, called by every entry point before ``import oneflow``, sets where they apply and never
over a value the user set:

- ``ONEFLOW_VM_COMPUTE_ON_WORKER_THREAD=0`` on a CPU-only machine: OneFlow 0.9.0's scheduler thread computes
  itself instead of spinning beside a worker, the same speed at half the CPU;
- ``GLOG_minloglevel=2`` on a CPU-only machine (hides the missing-CUDA-driver warning; errors stay), not with
  ``POSMLP_VERBOSE=1`` (``--verbose``); :func:`import_oneflow_quietly` also drops ``libibverbs not available``;
- ``OPENBLAS_CORETYPE=Haswell`` on CPUs with AVX2 and FMA: OneFlow's static OpenBLAS does not recognise recent
  Xeons and falls back to its SSE3 kernels, about half the sgemm speed.

Measurements: docs/benchmark.md ("CPU process settings").
"""
import glob
import os
import sys
import tempfile

VM_WORKER = "ONEFLOW_VM_COMPUTE_ON_WORKER_THREAD"
GLOG_LEVEL = "GLOG_minloglevel"
VERBOSE = "POSMLP_VERBOSE"
_QUIET_SET = "_POSMLP_GLOG_SET"  # marks a GLOG_minloglevel this module set (so --verbose may take it back)
IMPORT_NOISE = ("libibverbs not available",)
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


def verbose(environ=None):
    environ = os.environ if environ is None else environ
    return environ.get(VERBOSE, "") not in ("", "0")


def quiet_cpu_logs(environ=None):
    """Set ``GLOG_minloglevel=2`` on a CPU-only machine before OneFlow is imported, unless the user set it or
    asked for ``POSMLP_VERBOSE=1``; returns whether it was set."""
    environ = os.environ if environ is None else environ
    if "oneflow" in sys.modules or GLOG_LEVEL in environ or verbose(environ) or not cpu_only_machine():
        return False
    environ[GLOG_LEVEL] = "2"
    environ[_QUIET_SET] = "1"  # inherited by launched ranks, like the level itself
    return True


def set_verbose(environ=None):
    """``--verbose``: OneFlow's own log lines visible (before it is imported): undo :func:`quiet_cpu_logs`."""
    environ = os.environ if environ is None else environ
    environ[VERBOSE] = "1"
    if environ.pop(_QUIET_SET, None):
        environ.pop(GLOG_LEVEL, None)


def prepare_process(show_logs=False, environ=None):
    """What a CPU run needs before OneFlow starts: ``show_logs`` (``--verbose``: :func:`set_verbose`), then
    :func:`apply_cpu_defaults` and :func:`quiet_cpu_logs`. Called by the entry points (``cli.run``, ``tools/*.py``,
    ``tests/conftest.py``); returns the names set."""
    environ = os.environ if environ is None else environ
    if show_logs:
        set_verbose(environ)
    done = apply_cpu_defaults(environ)
    if quiet_cpu_logs(environ):
        done.append(GLOG_LEVEL)
    return done


def import_oneflow_quietly():
    """``import oneflow`` with its known start-up noise (:data:`IMPORT_NOISE`) removed from stderr; every other
    line it prints is passed on. Verbose (``POSMLP_VERBOSE=1``) or already imported: a plain import. On a CPU-only
    machine, also :func:`quiet_session_start`."""
    if "oneflow" in sys.modules or verbose():
        import oneflow  # noqa: F401
        return
    with _filtered_stderr(IMPORT_NOISE):
        import oneflow  # noqa: F401
    if cpu_only_machine():
        quiet_session_start()


class _filtered_stderr:
    """Within the block, file descriptor 2 (C++ and Python alike) goes to a temporary file; at its end every line
    holding none of ``noise`` is passed on to stderr."""

    def __init__(self, noise):
        self.noise = noise

    def __enter__(self):
        sys.stderr.flush()
        self.saved = os.dup(2)
        self.captured = tempfile.TemporaryFile()
        os.dup2(self.captured.fileno(), 2)

    def __exit__(self, *exc):
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        with self.captured:
            self.captured.seek(0)
            for line in self.captured.read().decode(errors="replace").splitlines():
                if not any(noise in line for noise in self.noise):
                    print(line, file=sys.stderr)


SESSION_NOISE = ("Failed to get cuda runtime version",)  # glog ERROR lines, so GLOG_minloglevel=2 keeps them


def quiet_session_start():
    """OneFlow starts its session when the first ``nn.Graph`` is built (graph mode, ONNX export) and then, on a
    machine without CUDA, logs ``E... cuda_device_manager_factory.cpp:65] Failed to get cuda runtime version``
    as a glog error. This wraps that one start (``MultiClientSession.TryInit`` while the session is not started)
    in :class:`_filtered_stderr` of :data:`SESSION_NOISE`; every other line passes. Call it on CPU-only machines
    only (there the line says nothing), after OneFlow is imported."""
    from oneflow.framework.multi_client_session import MultiClientSession

    start = MultiClientSession.TryInit
    if getattr(start, "_posmlp_quiet", False):
        return

    def try_init(self):
        if self.status_ != self.Status.CREATED:
            return start(self)
        with _filtered_stderr(SESSION_NOISE):
            return start(self)

    try_init._posmlp_quiet = True
    MultiClientSession.TryInit = try_init
