"""tools/_python.py: a tool started with a Python that lacks OneFlow (e.g. the system ``python3``) re-runs
under the checkout's ``.venv/bin/python``, or prints one ``error:`` line with the fix."""
import os
import shutil
import sys

import pytest

from launch import run_bounded

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_ONEFLOW = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('oneflow') else 1)"


def python_without_oneflow():
    for name in ("python3", "python3.11", "python3.12", "python3.9", "python"):
        exe = shutil.which(name)
        if exe and run_bounded([exe, "-c", HAS_ONEFLOW], capture_output=True, timeout=60).returncode == 1:
            return exe
    return None


@pytest.fixture
def bare_python():
    exe = python_without_oneflow()
    if exe is None:
        pytest.skip("no Python without OneFlow on PATH")
    return exe


def checkout(tmp_path, venv):
    """A checkout with tools/train.py and tools/_python.py, and ``.venv`` when ``venv`` (this test's Python's)."""
    (tmp_path / "tools").mkdir()
    for name in ("_python.py", "train.py"):
        shutil.copy(os.path.join(ROOT, "tools", name), tmp_path / "tools" / name)
    if venv:
        os.symlink(os.path.dirname(os.path.dirname(sys.executable)), tmp_path / ".venv")
    return tmp_path / "tools" / "train.py"


def test_without_a_venv_one_line_names_the_fix(bare_python, tmp_path):
    res = run_bounded([bare_python, str(checkout(tmp_path, venv=False)), "-c", "configs/demo.yaml"],
                      capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: this Python") and "make venv" in lines[0]


def test_with_a_venv_the_tool_runs_under_it(bare_python, tmp_path):
    res = run_bounded([bare_python, str(checkout(tmp_path, venv=True)), "--help"], capture_output=True,
                      text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: train.py") and "Train PosMLP" in res.stdout
