"""Shared test configuration. ``import oneflow_posmlp`` must precede ``import oneflow`` (it preloads
the cuDNN/cuBLAS libraries of the nvidia wheels); the test process (and the jobs it launches) then takes the CPU
settings the tools set (``_env.prepare_process``), before any test imports OneFlow.

Deadlines (setup.cfg ``timeout``, a test's own ``@pytest.mark.timeout(SECONDS)``): pytest-timeout's signal method
fails a test that passes its limit with its stack, and the run goes on. The signal's handler runs only between
Python bytecodes, and OneFlow 0.9.0's ``Tensor.numpy()`` waits for its virtual machine in native code (with the GIL
released, the handler delayed until the wait ends), so a wait that never ends needs more: :func:`_arm_watchdog`
has faulthandler's watchdog thread (native, needs no GIL) print every thread's stack and end the process
``WATCHDOG_GRACE`` seconds after the limit. In a pytest-xdist worker that is a crashed worker, which the
Makefile's ``--max-worker-restart 0`` turns into a red run naming the test.

``@pytest.mark.isolated`` runs a test in a fresh pytest process of its own (:func:`pytest_pyfunc_call`), bounded
by ``tests/launch.py``'s ``run_bounded``: a rare native crash of OneFlow 0.9.0 after nn.Graph calls then fails
that one test, with the child's output, instead of taking down the worker and the run."""
import faulthandler
import os
import pathlib
import signal
import sys
import time

import oneflow_posmlp  # noqa: F401  (before oneflow)
from oneflow_posmlp._env import prepare_process

prepare_process()
import pytest
import pytest_timeout

WATCHDOG_GRACE = 60  # seconds after a test's limit until the watchdog ends a process the signal could not reach
ISOLATED_CHILD = "POSMLP_TEST_ISOLATED_LIMIT"  # an isolated test's own pytest: its time limit in seconds
_DEADLINE = pytest.StashKey[float]()
_WATCHDOG_FD = pytest.StashKey[int]()

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
REFERENCE = FIXTURES / "reference"
REFERENCE_MODELS = ("tiny_gqpe", "tiny_lrpe", "tiny_lrpe_gated")
# the same architectures with parameters as a trained network holds them (PROVENANCE.md, "Trained-like models"):
# their outputs depend on the positional maps, so a wrong conversion shows
TRAINED_LIKE = REFERENCE / "trained_like"
TRAINED_LIKE_MODELS = ("tl_gqpe", "tl_lrpe", "tl_lrpe_gated")
ALL_REFERENCE_MODELS = REFERENCE_MODELS + TRAINED_LIKE_MODELS


def reference_file(name, suffix):
    """``tests/fixtures/reference[/trained_like]/NAME.SUFFIX`` of a reference model (``suffix``: json, npz, pth.tar)."""
    return (TRAINED_LIKE if name in TRAINED_LIKE_MODELS else REFERENCE) / f"{name}.{suffix}"

# A PosMLP small enough for OneFlow's CPU kernels: 64x64 input -> feature maps 16/8/4/2, which the
# windows 8/4/4/2 tile (levels 0 and 1 have several windows, so shifted windows apply there).
TINY_MODEL_CFG = dict(
    img_size=64,
    embed_dims=[8, 16, 32, 64],
    depths=[1, 1, 1, 1],
    win_size=[8, 4, 4, 2],
    gamma=[2, 4, 8, 16],
    mlp_ratio=[4, 4, 4, 2],
    num_classes=5,
    drop_path_rate=0.0,
)


@pytest.fixture
def tiny_model_cfg():
    return dict(TINY_MODEL_CFG)


@pytest.fixture(autouse=True, scope="session")
def _quiet_glog():
    os.environ.setdefault("GLOG_minloglevel", "2")
    yield


@pytest.fixture(scope="session")
def tiny_demo_root(tmp_path_factory):
    """A small demo shapes set (64 train / 16 val images) for training tests."""
    from oneflow_posmlp.data import ensure_demo_dataset

    return ensure_demo_dataset(str(tmp_path_factory.mktemp("demo") / "shapes"), train_per_class=16,
                               val_per_class=4, log=lambda *_: None)


def tiny_train_opts(root, **extra):
    """``--opts`` for a seconds-long run of configs/demo.yaml on ``tiny_demo_root``."""
    opts = {"data.root": root, "data.demo": "false", "data.num_workers": 0, "train.batch_size": 16,
            "train.epochs": 2, "train.warmup_epochs": 1, "log.progress": "false", "train.log_interval": 1}
    opts.update(extra)
    return [f"{k}={v}" for k, v in opts.items()]


# ----------------------------------------------------------------------------- deadlines and isolation
def _limit(item):
    """The test's time limit in seconds (pytest-timeout's: its marker, ``--timeout``, setup.cfg), or None."""
    timeout = pytest_timeout._get_item_settings(item).timeout
    return timeout if timeout and timeout > 0 else None


def pytest_configure(config):
    # the watchdog writes to the terminal's stderr, not to the capture of the test it ends
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is not None:
        with capman.global_and_fixture_disabled():
            config.stash[_WATCHDOG_FD] = os.dup(sys.__stderr__.fileno())
    else:
        config.stash[_WATCHDOG_FD] = os.dup(sys.__stderr__.fileno())


def pytest_unconfigure(config):
    faulthandler.cancel_dump_traceback_later()
    if _WATCHDOG_FD in config.stash:
        os.close(config.stash[_WATCHDOG_FD])
        del config.stash[_WATCHDOG_FD]


def pytest_collection_modifyitems(config, items):
    if os.environ.get(ISOLATED_CHILD):  # this is an isolated test's own run: its parent's deadline comes first
        for item in items:
            item.add_marker(pytest.mark.timeout(float(os.environ[ISOLATED_CHILD])), append=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    limit = _limit(item)
    if limit is not None:
        item.stash[_DEADLINE] = time.monotonic() + limit + WATCHDOG_GRACE
    try:
        return (yield)
    finally:
        faulthandler.cancel_dump_traceback_later()


def _arm_watchdog(item):
    """(Re)arm the watchdog for what is left of the test's deadline, and at least ``WATCHDOG_GRACE``: pytest
    cancels faulthandler's timer when a phase fails (``pytest_exception_interact``), so each phase arms it again,
    and a test that the signal did stop gets the time to report its failure and tear down (slow on a loaded
    machine), bounded again by the watchdog."""
    if _DEADLINE in item.stash:
        left = max(item.stash[_DEADLINE] - time.monotonic(), WATCHDOG_GRACE)
        faulthandler.dump_traceback_later(left, exit=True, file=item.config.stash[_WATCHDOG_FD])


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _arm_watchdog(item)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    _arm_watchdog(item)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item):
    _arm_watchdog(item)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_makereport(item, call):
    _arm_watchdog(item)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """An ``isolated`` test runs as ``python -m pytest NODEID`` in a process of its own; this one reports its end."""
    if pyfuncitem.get_closest_marker("isolated") is None or os.environ.get(ISOLATED_CHILD):
        return None
    import subprocess

    from launch import run_bounded

    limit = _limit(pyfuncitem) or 300
    # the child's own limit and watchdog end first, so its output says where it stopped
    child_limit = max(limit - WATCHDOG_GRACE - 15, 10)
    config = pyfuncitem.config
    args = list(config.invocation_params.args)  # the caller's -p plugins (not xdist) and config file, as given
    plugins = [x for i, a in enumerate(args[:-1]) if a == "-p" and "xdist" not in args[i + 1] for x in (a, args[i + 1])]
    ini = ["-c", str(config.inipath)] if config.inipath else []
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", *plugins, *ini,
           "--rootdir", str(config.rootpath), pyfuncitem.nodeid]
    env = dict(os.environ, **{ISOLATED_CHILD: str(child_limit)})
    env.pop("PYTEST_ADDOPTS", None)  # the child runs this one test, with setup.cfg's options
    try:
        res = run_bounded(cmd, timeout=limit - 5, capture_output=True, text=True, cwd=str(config.rootpath), env=env)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the isolated run of {pyfuncitem.nodeid} passed {limit - 5} s and was killed:\n"
                    f"{(exc.output or b'')[-4000:]!r}\n{(exc.stderr or b'')[-4000:]!r}", pytrace=False)
    tail = res.stdout.strip().splitlines()[-1:] or [""]
    if res.returncode == 0 and " passed" in tail[0]:
        return True
    if res.returncode == 0 and " skipped" in tail[0]:
        pytest.skip(f"skipped in its isolated run: {tail[0]}")
    how = (f"crashed ({signal.Signals(-res.returncode).name})" if res.returncode < 0 else
           f"exited {res.returncode}")
    fatal = res.stderr.find("Fatal Python error")  # faulthandler's report of a crash: the stacks, from the top
    err = res.stderr[fatal:fatal + 12000] if fatal >= 0 else res.stderr[-4000:]
    pytest.fail(f"the isolated run of {pyfuncitem.nodeid} {how}:\n{res.stdout[-6000:]}\n{err}", pytrace=False)
