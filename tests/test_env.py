"""oneflow_posmlp/_env.py: the CPU default of ONEFLOW_VM_COMPUTE_ON_WORKER_THREAD, never over the user's."""
import os
import subprocess
import sys

from oneflow_posmlp import _env

CODE = "import os, oneflow_posmlp; print(os.environ.get('ONEFLOW_VM_COMPUTE_ON_WORKER_THREAD', 'unset'))"


def _import_and_read(env_value):
    env = {k: v for k, v in os.environ.items() if k != _env.VM_WORKER}
    if env_value is not None:
        env[_env.VM_WORKER] = env_value
    return subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True,
                          timeout=120).stdout.strip()


def test_import_sets_the_cpu_default_but_keeps_the_users_setting():
    assert _import_and_read(None) == ("0" if _env.cpu_only_machine() else "unset")
    assert _import_and_read("1") == "1"


def test_defaults_need_oneflow_not_imported_and_a_cpu_only_machine(monkeypatch):
    environ = {}
    monkeypatch.setitem(sys.modules, "oneflow", sys)  # oneflow already imported: too late to set anything
    assert not _env.apply_cpu_defaults(environ) and environ == {}
    monkeypatch.delitem(sys.modules, "oneflow")
    monkeypatch.setattr(_env, "cpu_only_machine", lambda: True)
    assert _env.apply_cpu_defaults(environ) and environ == {_env.VM_WORKER: "0"}
    user = {_env.VM_WORKER: "1"}
    assert not _env.apply_cpu_defaults(user) and user == {_env.VM_WORKER: "1"}
    monkeypatch.setattr(_env, "cpu_only_machine", lambda: False)
    assert not _env.apply_cpu_defaults({})
