"""The test harness itself (tests/conftest.py, tests/launch.py, the Makefile's pytest-xdist flags): a run cannot
hang. Planted tests in a temporary folder run under pytest with this suite's conftest (``-p conftest``) and
setup.cfg: a test past its deadline fails and the run goes on; a wait the deadline's signal cannot reach is ended
by the watchdog with the stacks; a crashed pytest-xdist worker (segfault) fails its test and ends the run red;
an ``isolated`` test that crashes fails alone; ``run_bounded`` kills its job when its wait is interrupted."""
import os
import re
import signal
import sys
import threading
import time

import pytest

from conftest import WATCHDOG_GRACE
from launch import ROOT, alive, run_bounded

pytestmark = pytest.mark.slow


def xdist_flags():
    """The pytest-xdist options of ``make test`` (the Makefile's XDIST, with TEST_WORKERS=2)."""
    text = open(os.path.join(ROOT, "Makefile")).read()
    flags = re.search(r"^XDIST := (.*)$", text, re.M).group(1)
    return flags.replace("$(TEST_WORKERS)", "2").split()


def run_planted(tmp_path, files, *args, timeout=240):
    """Write ``files`` ({name: source}) to ``tmp_path`` and run pytest on them as the suite runs; returns
    ``(exit code, output, seconds)``."""
    for name, source in files.items():
        (tmp_path / name).write_text(source)
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "conftest", "-c",
           os.path.join(ROOT, "setup.cfg"), "--rootdir", str(tmp_path), *args, *map(str, sorted(tmp_path.glob("test_*.py")))]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "tests"), os.environ.get("PYTHONPATH", "")]))
    env.pop("PYTEST_ADDOPTS", None)
    start = time.time()
    res = run_bounded(cmd, timeout=timeout, capture_output=True, text=True, cwd=str(tmp_path), env=env)
    return res.returncode, res.stdout + res.stderr, time.time() - start


PASSES = "def test_passes():\n    assert True\n"
SEGFAULT = "import os, signal\n\ndef test_segfaults():\n    os.kill(os.getpid(), signal.SIGSEGV)\n"


def test_a_test_past_its_deadline_fails_with_its_stack_and_the_run_goes_on(tmp_path):
    code, out, _ = run_planted(tmp_path, {
        "test_a_sleeps.py": "import pytest, time\n\n@pytest.mark.timeout(3)\ndef test_sleeps_forever():\n"
                            "    while True:\n        time.sleep(3600)\n",
        "test_b_passes.py": PASSES}, "-n", "0")
    assert code == 1 and "Failed: Timeout (>3.0s) from pytest-timeout" in out, out[-3000:]
    assert "1 failed, 1 passed" in out and "time.sleep(3600)" in out, out[-3000:]


def test_the_watchdog_ends_a_wait_the_signal_cannot_reach(tmp_path):
    """The stand-in for a native wait (Tensor.numpy() holds off the deadline's signal until it returns): SIGALRM
    blocked in the test's thread. The watchdog prints the stacks and ends the process at deadline + grace."""
    code, out, seconds = run_planted(tmp_path, {
        "test_blocked.py": "import pytest, signal, time\n\n@pytest.mark.timeout(2)\ndef test_blocked_wait():\n"
                           "    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})\n"
                           "    while True:\n        time.sleep(3600)\n"}, "-n", "0")
    assert code == 1 and re.search(r"Timeout \(\d+:\d\d:\d\d", out) and "in test_blocked_wait" in out, out[-3000:]
    assert seconds >= 2 + WATCHDOG_GRACE, seconds  # not before the grace has passed (the upper bound: run_planted's)


def test_a_crashed_worker_fails_its_test_and_ends_the_run_red(tmp_path):
    code, out, _ = run_planted(tmp_path, {"test_a_crashes.py": SEGFAULT, "test_b_passes.py": PASSES}, *xdist_flags())
    assert code == 1, out[-3000:]
    assert "worker 'gw" in out and "crashed while running 'test_a_crashes.py::test_segfaults'" in out, out[-3000:]
    assert "Fatal Python error: Segmentation fault" in out, out[-3000:]
    # ended at once: pytest-xdist 3.8.0's loadscope can hang after replacing a crashed worker
    assert "crashed and worker restarting disabled" in out, out[-3000:]


def test_an_isolated_test_that_crashes_fails_alone(tmp_path):
    code, out, _ = run_planted(tmp_path, {
        "test_isolated.py": "import os, signal, pytest\n\n@pytest.mark.isolated\ndef test_segfaults():\n"
                            "    os.kill(os.getpid(), signal.SIGSEGV)\n\n" + PASSES}, "-n", "0")
    assert code == 1 and "crashed (SIGSEGV)" in out and "1 failed, 1 passed" in out, out[-3000:]
    assert "Fatal Python error: Segmentation fault" in out, out[-3000:]


class _Interrupted(Exception):
    pass


def test_run_bounded_kills_the_job_when_its_wait_is_interrupted(tmp_path):
    """An exception in the wait (the test's deadline, Ctrl-C) ends the job's whole process group, not only the
    launcher: no rank trains on as an orphan."""
    pids = tmp_path / "pids"

    def interrupt(*_):
        raise _Interrupted

    old = signal.signal(signal.SIGUSR1, interrupt)
    timer = threading.Timer(3, os.kill, (os.getpid(), signal.SIGUSR1))
    try:
        timer.start()
        with pytest.raises(_Interrupted):
            run_bounded(["bash", "-c", f"sleep 600 & echo $! > {pids}; sleep 600"], timeout=120)
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, old)
    orphan = int(pids.read_text())
    deadline = time.time() + 10
    while alive(orphan) and time.time() < deadline:
        time.sleep(0.1)
    survived = alive(orphan)
    if survived:
        os.kill(orphan, signal.SIGKILL)
    assert not survived, "the job's background process outlived the interrupted wait"
