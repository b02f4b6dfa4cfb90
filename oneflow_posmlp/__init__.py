"""oneflow-posmlp: PosMLP (positional spatial gating MLP) for OneFlow.

Importing this package first makes the cuDNN/cuBLAS libraries shipped by the ``nvidia-*-cu11``
wheels loadable, so ``import oneflow`` works without setting ``LD_LIBRARY_PATH``; on a CPU-only machine it
sets ``ONEFLOW_VM_COMPUTE_ON_WORKER_THREAD=0`` and ``GLOG_minloglevel=2`` unless the user set them
(``_env.py``; ``POSMLP_VERBOSE=1`` keeps OneFlow's log lines), and on CPUs with AVX2 and FMA
``OPENBLAS_CORETYPE=Haswell`` unless set; and it registers the
PosMLP variants in flowvision's ``ModelCreator`` (when ``flowvision.models`` is, or gets, imported).
"""
from ._env import apply_cpu_defaults, quiet_cpu_logs
from ._flowvision_hook import install as _register_in_flowvision
from ._preload import preload_cuda_libraries

apply_cpu_defaults()
quiet_cpu_logs()
preload_cuda_libraries()
_register_in_flowvision()

__version__ = "0.1.0"
