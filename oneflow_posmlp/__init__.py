"""oneflow-posmlp: PosMLP (positional spatial gating MLP) for OneFlow.

Importing this package first makes the cuDNN/cuBLAS libraries shipped by the ``nvidia-*-cu11``
wheels loadable, so ``import oneflow`` works without setting ``LD_LIBRARY_PATH``, and on a CPU-only
machine sets ``ONEFLOW_VM_COMPUTE_ON_WORKER_THREAD=0`` unless the user set it (``_env.py``).
"""
from ._env import apply_cpu_defaults
from ._preload import preload_cuda_libraries

apply_cpu_defaults()
preload_cuda_libraries()

__version__ = "0.1.0"
