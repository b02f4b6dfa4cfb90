"""oneflow-posmlp: PosMLP (positional spatial gating MLP) for OneFlow.

Importing this package first makes the cuDNN/cuBLAS libraries shipped by the ``nvidia-*-cu11``
wheels loadable, so ``import oneflow`` works without setting ``LD_LIBRARY_PATH``.
"""
from ._preload import preload_cuda_libraries

preload_cuda_libraries()

__version__ = "0.1.0"
