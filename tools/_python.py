"""Run the tools with the project's Python: imported first by every ``tools/*.py`` (before anything else).

A Python without OneFlow (e.g. the system ``python3`` instead of ``.venv/bin/python``) re-executes the same
command with this checkout's ``.venv/bin/python`` when it exists, else prints one ``error:`` line with the fix
and exits 2. Standard library only: it runs under any Python 3.
"""
import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PYTHON = os.path.join(ROOT, ".venv", "bin", "python")
_REEXEC = "POSMLP_REEXEC"  # set on the re-executed process: never loop


def ensure_project_python(argv=None):
    if importlib.util.find_spec("oneflow") is not None:
        return
    argv = sys.argv if argv is None else argv
    if os.path.isfile(VENV_PYTHON) and os.access(VENV_PYTHON, os.X_OK) and not os.environ.get(_REEXEC):
        os.environ[_REEXEC] = "1"
        os.execv(VENV_PYTHON, [VENV_PYTHON, *argv])
    script = os.path.relpath(os.path.abspath(argv[0])) if argv and argv[0] else "tools/train.py"
    print(f"error: this Python ({sys.executable}, {sys.version.split()[0]}) has no OneFlow; run `make venv` in "
          f"{ROOT} once, then `.venv/bin/python {script} ...` (or `pip install -e .` into a Python 3.7-3.10)",
          file=sys.stderr)
    sys.exit(2)


ensure_project_python()
