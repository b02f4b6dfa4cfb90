"""oneflow-posmlp: PosMLP (positional spatial gating MLP) for OneFlow.

Importing the package imports neither OneFlow nor flowvision and changes no environment variable. It makes the
cuDNN/cuBLAS libraries of the ``nvidia-*-cu11`` wheels loadable (``_preload.py``), so a later ``import oneflow``
works without ``LD_LIBRARY_PATH``: import it before ``oneflow``. The command-line tools set the CPU defaults
OneFlow reads at start-up themselves (``_env.prepare_process``); ``import oneflow_posmlp.models`` registers the
PosMLP variants in flowvision's ``ModelCreator``.
"""
from ._preload import preload_cuda_libraries

preload_cuda_libraries()

__version__ = "0.1.0"
