"""Measure the float32 activation bytes per image a training forward keeps, for the table of the micro-batch
warning (oneflow_posmlp/engine/guidance.py); prints one table line per config:

    python tools/measure_activations.py configs/posmlp_t.yaml configs/posmlp_s.yaml configs/posmlp_b.yaml \\
        configs/posmlp_t_384_ft.yaml
"""
try:  # first: re-run under .venv/bin/python when this Python lacks OneFlow (tools/_python.py)
    import _python  # noqa: F401
except ImportError:  # loaded from elsewhere (runpy, importlib): that Python runs the package already
    pass
from oneflow_posmlp.engine.guidance import main  # noqa: E402  (imports oneflow_posmlp before oneflow)

if __name__ == "__main__":
    main()
