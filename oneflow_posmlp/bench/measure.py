"""What the benchmark measures besides time: synchronisation, memory, threads and the environment.

Memory: ``peak_rss_mb`` is the process's peak resident set size (``ru_maxrss``), a high-water mark over the
whole process; ``current_rss_mb`` the resident set now; on CUDA ``gpu_used_mb`` this process's device memory as
nvidia-smi reports it.
"""
import os
import platform
import resource
import shutil
import subprocess

import oneflow as flow

# Environment that changes CPU speed, printed with the figures: OpenBLAS's kernel choice (after an OpenBLAS
# call OneFlow's scalar elementwise kernels can run ~3x slower on some cores) and the VM worker setting.
ENV_SHOWN = ("OPENBLAS_CORETYPE", "ONEFLOW_VM_COMPUTE_ON_WORKER_THREAD", "OMP_NUM_THREADS")


def sync():
    """Wait for every queued OneFlow kernel (eager and graph)."""
    flow._oneflow_internal.eager.Sync()


def peak_rss_mb():
    """Peak resident set size of this process so far, MB (Linux reports ``ru_maxrss`` in KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb():
    """Current resident set size of this process, MB, or None where ``/proc`` is missing."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError, IndexError):
        return None


def gpu_used_mb():
    """Device memory this process holds according to nvidia-smi, MB, or None (no nvidia-smi, no entry)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    used = [float(mem) for pid, mem in (line.split(",")[:2] for line in out.splitlines() if "," in line)
            if int(pid) == os.getpid()]
    return sum(used) if used else None


def threads():
    """CPU threads available to this process (``OMP_NUM_THREADS`` if set, else the CPU affinity)."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def environment():
    """The software and the settings a figure depends on (JSON-able)."""
    return {"oneflow": flow.__version__, "python": platform.python_version(), "threads": threads(),
            "cpu_count": os.cpu_count(), "env": {k: os.environ.get(k) for k in ENV_SHOWN}}
