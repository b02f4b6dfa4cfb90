"""oneflow_posmlp/_env.py: ``import oneflow_posmlp`` changes no environment variable and installs no import hook; the
tools set the CPU defaults (ONEFLOW_VM_COMPUTE_ON_WORKER_THREAD, OPENBLAS_CORETYPE, quiet OneFlow logs), never over
the user's; the tools' quiet start-up and ``--verbose``."""
import json
import os
import sys

import pytest

from launch import run_bounded
from oneflow_posmlp import _env

CPU_KEYS = (_env.VM_WORKER, _env.CORETYPE, _env.GLOG_LEVEL, _env._QUIET_SET, _env.VERBOSE)
SIDE_EFFECTS = """
import json, os, sys
env, hooks = dict(os.environ), list(sys.meta_path)
import oneflow_posmlp
print(json.dumps({"changed": sorted(k for k in set(env) | set(os.environ) if env.get(k) != os.environ.get(k)),
                  "hooks": [repr(f) for f in sys.meta_path if f not in hooks],
                  "oneflow": "oneflow" in sys.modules}))
"""
TOOL_SETTINGS = """
import os
from oneflow_posmlp.cli import run
run(lambda: print(os.environ.get("ONEFLOW_VM_COMPUTE_ON_WORKER_THREAD", "unset"), os.environ.get("OPENBLAS_CORETYPE")))
"""


def _python(code, **env_values):
    env = {k: v for k, v in os.environ.items() if k not in CPU_KEYS}
    env.update(env_values)
    res = run_bounded([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().splitlines()[-1]


def test_importing_the_package_changes_no_environment_variable_and_installs_no_import_hook():
    assert json.loads(_python(SIDE_EFFECTS)) == {"changed": [], "hooks": [], "oneflow": False}


def test_importing_the_models_registers_them_in_flowvision_as_timm_models_do():
    code = ("import oneflow_posmlp.models\nfrom flowvision.models import ModelCreator\n"
            "print(sorted(ModelCreator.model_list('posmlp*')))")
    assert _python(code) == str(["posmlp_b", "posmlp_s", "posmlp_t", "posmlp_t_384"])


def test_the_tools_set_the_cpu_defaults_before_oneflow_starts_but_keep_the_users_settings():
    vm, core = _python(TOOL_SETTINGS).split()
    assert vm == ("0" if _env.cpu_only_machine() else "unset")
    assert core == ("Haswell" if {"avx2", "fma"} <= _env.cpu_flags() else "None")
    assert _python(TOOL_SETTINGS, ONEFLOW_VM_COMPUTE_ON_WORKER_THREAD="1", OPENBLAS_CORETYPE="Zen").split() == ["1", "Zen"]


def test_defaults_need_oneflow_not_imported_and_a_cpu_only_machine(monkeypatch):
    environ = {}
    monkeypatch.setitem(sys.modules, "oneflow", sys)  # oneflow already imported: too late to set anything
    assert not _env.apply_cpu_defaults(environ) and environ == {}
    monkeypatch.delitem(sys.modules, "oneflow")
    monkeypatch.setattr(_env, "cpu_only_machine", lambda: True)
    monkeypatch.setattr(_env, "cpu_flags", lambda: set())
    assert _env.apply_cpu_defaults(environ) and environ == {_env.VM_WORKER: "0"}
    user = {_env.VM_WORKER: "1"}
    assert not _env.apply_cpu_defaults(user) and user == {_env.VM_WORKER: "1"}
    monkeypatch.setattr(_env, "cpu_only_machine", lambda: False)
    assert not _env.apply_cpu_defaults({})


def test_quiet_logs_on_cpu_unless_the_user_set_them_or_asked_for_verbose(monkeypatch):
    monkeypatch.delitem(sys.modules, "oneflow", raising=False)  # not imported yet (as before `import oneflow`)
    monkeypatch.setattr(_env, "cpu_only_machine", lambda: True)
    environ = {}
    assert _env.quiet_cpu_logs(environ) and environ[_env.GLOG_LEVEL] == "2"
    _env.set_verbose(environ)  # --verbose takes back only what quiet_cpu_logs set
    assert _env.GLOG_LEVEL not in environ and _env.verbose(environ)
    assert not _env.quiet_cpu_logs({_env.GLOG_LEVEL: "0"})
    assert not _env.quiet_cpu_logs({_env.VERBOSE: "1"})
    environ = {_env.GLOG_LEVEL: "1"}
    _env.set_verbose(environ)
    assert environ[_env.GLOG_LEVEL] == "1"  # the user's own level stays


def _tool_stderr(*extra):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k not in (_env.GLOG_LEVEL, _env.VERBOSE)}
    res = run_bounded([sys.executable, os.path.join(root, "tools", "eval.py"), "-c", "configs/demo.yaml",
                       "--weights", "/nonexistent/w.safetensors", *extra], cwd=root, env=env, capture_output=True,
                      text=True, timeout=120)
    assert res.returncode == 2
    return res.stderr.strip().splitlines()


@pytest.mark.skipif(not _env.cpu_only_machine(), reason="an NVIDIA device node exists (/dev/nvidia*): the tools "
                    "hide OneFlow's start-up lines only on CPU-only machines, which this test checks")
def test_a_tool_prints_only_its_error_line_on_cpu_and_oneflow_lines_with_verbose():
    quiet = _tool_stderr()
    assert len(quiet) == 1 and quiet[0].startswith("error: ") and "/nonexistent/w.safetensors" in quiet[0]
    verbose = _tool_stderr("--verbose")
    assert any("libibverbs" in line or "CUDA driver" in line for line in verbose) and verbose[-1] == quiet[0]


def test_openblas_core_type_needs_avx2_and_fma_and_keeps_the_users(monkeypatch):
    monkeypatch.delitem(sys.modules, "oneflow", raising=False)
    monkeypatch.setattr(_env, "cpu_only_machine", lambda: False)
    monkeypatch.setattr(_env, "cpu_flags", lambda: {"sse2", "avx", "avx2", "fma"})
    environ = {}
    assert _env.apply_cpu_defaults(environ) == [_env.CORETYPE] and environ == {_env.CORETYPE: "Haswell"}
    user = {_env.CORETYPE: "Prescott"}
    assert _env.apply_cpu_defaults(user) == [] and user == {_env.CORETYPE: "Prescott"}
    monkeypatch.setattr(_env, "cpu_flags", lambda: {"sse2", "avx"})  # no AVX2: OpenBLAS's own choice stays
    assert _env.apply_cpu_defaults({}) == []


@pytest.mark.skipif(not _env.cpu_only_machine(), reason="an NVIDIA device node exists (/dev/nvidia*): the CUDA "
                    "line is hidden only on CPU-only machines, which this test checks")
def test_graph_mode_on_cpu_hides_oneflows_cuda_runtime_line(tiny_demo_root, tmp_path):
    """OneFlow logs ``E... cuda_device_manager_factory.cpp:65] Failed to get cuda runtime version`` when the first
    nn.Graph starts its session (a glog error, so GLOG_minloglevel=2 keeps it); the tools hide it on CPU."""
    from launch import train_cmd

    env = {k: v for k, v in os.environ.items() if k != _env.GLOG_LEVEL}
    cmd = [sys.executable, *train_cmd(tiny_demo_root, tmp_path, **{"train.graph": "true",
                                                                    "data.limit_train_batches": 1})]
    quiet = run_bounded(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "cuda runtime version" not in quiet.stderr, quiet.stderr
    verbose = run_bounded(cmd + ["--verbose"], env=env, capture_output=True, text=True, timeout=300)
    assert "Failed to get cuda runtime version" in verbose.stderr  # (OneFlow does print it: this is what is hidden)


def test_filtered_stderr_passes_every_other_line(capfd):
    with _env._filtered_stderr(("noise",)):
        os.write(2, b"some noise here\nkept line\n")
        print("python line", file=sys.stderr)
    err = capfd.readouterr().err.splitlines()
    assert sorted(err) == ["kept line", "python line"], err
