"""Make the cuDNN / cuBLAS shared libraries of the ``nvidia-*-cu11`` wheels loadable.

The PyPI build of ``oneflow==0.9.0`` links against ``libcudnn.so.8`` and ``libcublas.so.11``.
pip installs them under ``site-packages/nvidia/{cudnn,cublas}/lib``, which the dynamic loader
does not search. Loading them once with ``RTLD_GLOBAL`` before ``import oneflow`` satisfies
OneFlow's dependencies without anybody touching ``LD_LIBRARY_PATH``.
"""
import ctypes
import glob
import importlib.util
import os
import sys

_DONE = False

# Order matters: cublasLt before cublas, the cudnn sub-libraries before the cudnn front end.
_LIB_PATTERNS = (
    ("cublas", ("libcublasLt.so.*", "libcublas.so.*")),
    ("cudnn", ("libcudnn_ops_infer.so.*", "libcudnn_ops_train.so.*", "libcudnn_cnn_infer.so.*",
               "libcudnn_cnn_train.so.*", "libcudnn_adv_infer.so.*", "libcudnn_adv_train.so.*",
               "libcudnn.so.*")),
)


def _nvidia_lib_dir(component):
    try:
        spec = importlib.util.find_spec(f"nvidia.{component}")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        lib = os.path.join(root, "lib")
        if os.path.isdir(lib):
            return lib
    return None


def preload_cuda_libraries():
    """Load the nvidia wheel libraries globally; a no-op if already done or oneflow is loaded."""
    global _DONE
    if _DONE or "oneflow" in sys.modules:
        _DONE = True
        return
    missing = []
    for component, patterns in _LIB_PATTERNS:
        lib_dir = _nvidia_lib_dir(component)
        if lib_dir is None:
            missing.append(f"nvidia-{component}-cu11")
            continue
        for pattern in patterns:
            for path in sorted(glob.glob(os.path.join(lib_dir, pattern))):
                try:
                    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                except OSError:
                    pass  # a CUDA-only dependency may be absent on CPU machines; oneflow reports what it needs
    _DONE = True
    if missing:
        import warnings

        warnings.warn(
            "oneflow_posmlp: could not find " + ", ".join(missing) + "; `import oneflow` may fail with "
            "'libcudnn.so.8: cannot open shared object file'. Fix: pip install -e . (setup.cfg pins them).",
            RuntimeWarning,
        )
