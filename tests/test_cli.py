"""oneflow_posmlp/cli/: the console scripts declared in setup.cfg resolve to the tools' ``main(argv=None)``, the
tools/*.py entry points run the same mains, the ``--help`` texts list what the registry holds, and the shared
plumbing turns user errors into one ``error:`` line."""
import configparser
import importlib
import importlib.util
import os
import subprocess
import sys

import pytest

from oneflow_posmlp.config import list_models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = {"posmlp-train": "train.py", "posmlp-eval": "eval.py", "posmlp-convert": "convert_torch_weights.py",
         "posmlp-predict": "predict.py", "posmlp-export-onnx": "export_onnx.py"}
OTHER_OWNER = {"posmlp-benchmark"}  # oneflow_posmlp.bench.cli: written on another branch


def console_scripts():
    """``{script: (module, function)}`` of setup.cfg's ``[options.entry_points] console_scripts``."""
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    out = {}
    for line in cfg["options.entry_points"]["console_scripts"].strip().splitlines():
        name, _, target = (part.strip() for part in line.partition("="))
        module, _, func = target.partition(":")
        out[name] = (module, func)
    return out


def test_setup_cfg_declares_every_tool():
    assert set(console_scripts()) == set(TOOLS) | OTHER_OWNER


@pytest.mark.parametrize("name", sorted(set(TOOLS) | OTHER_OWNER))
def test_every_entry_point_resolves_to_a_main(name):
    module, func = console_scripts()[name]
    if name in OTHER_OWNER and importlib.util.find_spec(module.rpartition(".")[0]) is None:
        pytest.skip(f"{name} -> {module}: that package is not on this branch (the benchmark's own work)")
    main = getattr(importlib.import_module(module), func)
    assert callable(main) and main.__code__.co_varnames[:1] == ("argv",)


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_help_runs_in_process(name, capsys):
    module, func = console_scripts()[name]
    with pytest.raises(SystemExit) as exc:
        getattr(importlib.import_module(module), func)(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ") and "--verbose" in out


def test_tools_are_the_same_mains():
    """tools/*.py only re-exec under .venv when needed and call the package's main."""
    for name, tool in TOOLS.items():
        module, func = console_scripts()[name]
        spec = importlib.util.spec_from_file_location(f"tool_{tool[:-3]}", os.path.join(ROOT, "tools", tool))
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
        assert loaded.main is getattr(importlib.import_module(module), func), tool


def test_convert_help_lists_the_registry(capsys):
    from oneflow_posmlp.cli import convert

    with pytest.raises(SystemExit):
        convert.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"registered model name: {', '.join(list_models())}" in out


def test_convert_opts_need_a_config(capsys):
    from oneflow_posmlp.cli import convert

    with pytest.raises(SystemExit) as exc:
        convert.main(["--src", "x", "--dst", "y", "--model", "posmlp_t", "--opts", "model.num_classes=3"])
    assert exc.value.code == 2 and "--opts overrides a config: give it with --config" in capsys.readouterr().err


def test_module_runs_as_python_dash_m():
    """``python -m oneflow_posmlp.cli.train`` (what ``oneflow.distributed.launch -m`` runs on every rank)."""
    res = subprocess.run([sys.executable, "-m", "oneflow_posmlp.cli.train", "--help"], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: ") and "Train PosMLP" in res.stdout


def test_a_bad_config_is_one_error_line(capsys):
    from oneflow_posmlp.cli import eval as eval_tool

    code = eval_tool.main(["-c", os.path.join(ROOT, "configs", "demo.yaml"), "--weights", "none",
                           "--opts", "model.embed_dim=[8]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: unknown config key 'model.embed_dim'; did you mean 'model.embed_dims'?")


def _log_lines(path):
    """The messages of a log file (``HH:MM:SS [rank R] message`` lines), without the time and rank."""
    return [line.split("] ", 1)[1] for line in open(path).read().splitlines()]


@pytest.mark.parametrize("opts,needle,existing", [
    (["dist.data_parallel=2"], "error: dist layout data_parallel=2", True),  # before the trainer opens its log
    (["dist.data_parallel=2"], "error: dist layout data_parallel=2", False),  # ... of a new output directory
    (["data.root=/nonexistent/data"], "error: data folder /nonexistent/data/train does not exist", False),  # after
])
def test_an_error_at_start_is_the_first_line_of_the_ranks_log(tmp_path, capsys, opts, needle, existing):
    """An error is written to the rank's log as its first line after the version line (every log starts with it):
    always once the trainer opened the log; before that into an output directory that exists (a new run's bad
    input creates nothing)."""
    from oneflow_posmlp.cli import train as train_tool
    from oneflow_posmlp.engine.logger import first_line

    out = tmp_path / "out"
    if existing:
        out.mkdir()
    code = train_tool.main(["-c", os.path.join(ROOT, "configs", "demo.yaml"), "--output", str(out),
                            "--opts", "data.demo=false", "data.root=/nonexistent/data", *opts])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(needle), err
    if existing or "dist.data_parallel=2" not in opts:
        assert _log_lines(out / "log_rank0.txt") == [first_line(), err[0]]
    else:
        assert not out.exists()


@pytest.mark.distributed
def test_a_failing_multi_rank_start_writes_the_error_first_in_every_ranks_log(tmp_path):
    """Under oneflow.distributed.launch each rank prints its ``error:`` line, then the launcher ends the job and
    prints its own CalledProcessError traceback (docs/parallel.md); in the (existing) output directory every
    rank's log_rank*.txt holds the error as its first line after the version line. (The layout check follows
    OneFlow's rendezvous, so both ranks reach it together, before the launcher, which polls once a second, ends
    either.)"""
    import socket

    from oneflow_posmlp.engine.logger import first_line

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = subprocess.run([sys.executable, "-m", "oneflow.distributed.launch", "--nproc_per_node", "2", "--master_port",
                          str(port), os.path.join(ROOT, "tools", "train.py"), "-c", "configs/demo.yaml", "--output",
                          str(tmp_path), "--opts", "data.demo=false", "data.root=/nonexistent", "dist.data_parallel=3"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, GLOG_minloglevel="2"))
    error = "error: dist layout data_parallel=3 x tensor_parallel=1 x pipeline_parallel=1 = 3 ranks, but 2 were launched"
    lines = res.stderr.splitlines()
    assert res.returncode == 1 and lines[-1].startswith("subprocess.CalledProcessError: Command "), res.stderr[-3000:]
    first_error = next(i for i, line in enumerate(lines) if line.startswith("error: "))
    assert lines[first_error].startswith(error) and first_error < lines.index("Traceback (most recent call last):")
    for rank in (0, 1):
        logged = _log_lines(tmp_path / f"log_rank{rank}.txt")
        assert logged[:1] == [first_line()] and logged[1].startswith(error), (rank, logged)
