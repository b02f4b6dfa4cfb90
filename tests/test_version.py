"""One version (``oneflow_posmlp.__version__``, read by setup.cfg): every command's --version prints it, the
weights and checkpoints written record it, CHANGELOG.md has its section. (The log's first line: test_logger.py;
the built wheel's metadata and a run of the installed package: test_packaging.py.)"""
import configparser
import json
import os
import re

import numpy as np
import pytest

import oneflow_posmlp
from oneflow_posmlp import __version__
from oneflow_posmlp.version import version_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_version_is_set_in_one_place():
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    assert cfg["metadata"]["version"] == "attr: oneflow_posmlp.__version__"
    assert version_text().startswith(f"oneflow-posmlp {__version__} (OneFlow 0.9.0")


def test_the_changelog_has_this_versions_section():
    text = open(os.path.join(ROOT, "CHANGELOG.md")).read()
    assert "Keep a Changelog" in text and "## [Unreleased]" in text
    assert re.search(rf"^## \[{re.escape(__version__)}\] - \d{{4}}-\d\d-\d\d$", text, re.M), "no section for " + __version__


def _mains():
    from oneflow_posmlp.bench import cli as bench
    from oneflow_posmlp.cli import convert, eval as eval_, export_onnx, predict, train

    return {"posmlp-train": train.main, "posmlp-eval": eval_.main, "posmlp-predict": predict.main,
            "posmlp-export-onnx": export_onnx.main, "posmlp-convert": convert.main, "posmlp-benchmark": bench.main}


def test_every_command_in_setup_cfg_prints_the_version(capsys, monkeypatch):
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    commands = [line.split("=")[0].strip() for line in cfg["options.entry_points"]["console_scripts"].split("\n")
                if line.strip()]
    mains = _mains()
    assert sorted(commands) == sorted(mains)
    for command in commands:
        monkeypatch.setattr("sys.argv", [command])  # argparse's prog, as the installed command has it
        with pytest.raises(SystemExit) as done:
            mains[command](["--version"])
        assert done.value.code == 0
        assert capsys.readouterr().out == f"{command}: {version_text()}\n"


def test_safetensors_and_oneflow_weights_record_the_version_that_wrote_them(tmp_path, monkeypatch):
    import oneflow as flow

    from oneflow_posmlp.checkpoint import load_weights, save_weights
    from oneflow_posmlp.checkpoint.oneflow_io import load_meta, save_oneflow_weights
    from oneflow_posmlp.checkpoint.safetensors_io import load_safetensors

    monkeypatch.setattr(oneflow_posmlp, "__version__", "9.8.7")  # read when writing, not when imported
    path = str(tmp_path / "w.safetensors")
    save_weights({"a": np.ones(2, np.float32)}, path, {"posmlp_version": "0.0.1", "weights": "model"})
    _, header = load_safetensors(path, with_metadata=True)
    assert header["posmlp_version"] == "9.8.7" and header["weights"] == "model"  # the writer's version wins
    assert load_weights(path)[1]["posmlp_version"] == "9.8.7"
    save_oneflow_weights({"a": flow.ones(2)}, str(tmp_path / "dir"), {"weights": "model"})
    assert load_meta(str(tmp_path / "dir"))["posmlp_version"] == "9.8.7"
    assert json.load(open(tmp_path / "dir" / "posmlp_meta.json"))["weights"] == "model"


def test_a_training_checkpoint_records_the_version_that_wrote_it(tmp_path, monkeypatch):
    import oneflow as flow

    from oneflow_posmlp.checkpoint import read_oneflow_checkpoint
    from oneflow_posmlp.engine.state import save_training_state

    class OneRank:  # the ParallelContext surface save_training_state uses, on one process
        is_main = True

        @staticmethod
        def gather(state):
            return state

    monkeypatch.setattr("oneflow_posmlp.engine.state.any_rank", lambda flags, ctx: flags)
    monkeypatch.setattr(oneflow_posmlp, "__version__", "9.8.7")
    save_training_state(str(tmp_path / "last"), {"model": {"w": flow.ones(2)}, "epoch": 1}, OneRank())
    state = read_oneflow_checkpoint(str(tmp_path / "last"), tensor=lambda a: a)
    assert state["posmlp_version"] == "9.8.7" and state["epoch"] == 1
