"""``-c NAME``: the built-in configs shipped in the package (config/loader.py ``resolve_config``), a path winning
over a name, an unknown name's error listing the names; every command that takes a config takes a name."""
import os

import pytest

from oneflow_posmlp.config import ConfigError, builtin_configs, load_config, resolve_config
from oneflow_posmlp.config.loader import BUILTIN_DIR

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = ["demo", "posmlp_b", "posmlp_s", "posmlp_t", "posmlp_t_384_ft"]


def test_the_shipped_recipes_are_package_data_and_the_checkouts_configs_are_the_same_files():
    assert builtin_configs() == SHIPPED
    assert os.path.dirname(BUILTIN_DIR) == os.path.dirname(os.path.abspath(__import__("oneflow_posmlp").__file__))
    # one copy: the checkout's configs/ is where they are edited, and it is the package's folder
    assert os.path.realpath(os.path.join(ROOT, "configs")) == os.path.realpath(BUILTIN_DIR)


@pytest.mark.parametrize("given", ["demo", "demo.yaml", "configs/demo.yaml"])
def test_a_name_resolves_from_any_directory(tmp_path, monkeypatch, given):
    monkeypatch.chdir(tmp_path)  # no configs/ here: the name (or the checkout path of the docs) means the built-in
    assert resolve_config(given) == os.path.join(BUILTIN_DIR, "demo.yaml")
    assert load_config(given)["model"]["num_classes"] == 4


def test_a_path_wins_over_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").write_text("model: {name: posmlp_s}\n")  # a file named like a built-in config
    assert resolve_config("demo") == "demo"
    assert load_config("demo")["model"]["embed_dims"][0] == 128  # posmlp_s, not the demo model
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "posmlp_t.yaml").write_text("train: {epochs: 3}\n")
    assert load_config("configs/posmlp_t.yaml")["train"]["epochs"] == 3  # the user's configs/, not the package's


def test_a_folder_does_not_hide_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "posmlp_s").mkdir()  # e.g. an output folder named after the model
    assert load_config("posmlp_s")["model"]["embed_dims"][0] == 128
    (tmp_path / "mine").mkdir()
    with pytest.raises(ConfigError, match="config path mine is a directory"):
        load_config("mine")


@pytest.mark.parametrize("given", ["demoo", "other/demo.yaml", "configs/nope.yaml"])
def test_an_unknown_name_lists_the_built_in_names(tmp_path, monkeypatch, given):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_config(given)
    assert f"config {given} not found: no such file, nor a built-in config" in str(err.value)
    assert str(err.value).endswith("built-in name: " + ", ".join(SHIPPED))


def _tool_argvs(tmp_path):
    from oneflow_posmlp.bench import cli as bench
    from oneflow_posmlp.cli import convert, eval as eval_, export_onnx, predict, train

    w = str(tmp_path / "w.safetensors")
    return {
        "train": (train.main, ["-c", "{}"]),
        "eval": (eval_.main, ["-c", "{}", "--weights", w]),
        "predict": (predict.main, ["-c", "{}", "--weights", w, str(tmp_path)]),
        "export_onnx": (export_onnx.main, ["-c", "{}", "--out", str(tmp_path / "m.onnx")]),
        "convert": (convert.main, ["--src", w, "--dst", str(tmp_path / "o.safetensors"), "--config", "{}"]),
        "benchmark": (bench.main, ["--config", "{}", "--modes", "eval-eager"]),
    }


@pytest.mark.parametrize("tool", ["train", "eval", "predict", "export_onnx", "convert", "benchmark"])
def test_every_command_resolves_names_and_lists_them_for_an_unknown_one(tmp_path, monkeypatch, capsys, tool):
    """Every tool hands its -c/--config to the loader's resolution: an unknown name is one error line listing the
    built-in names (exit 2), before anything else is read."""
    monkeypatch.chdir(tmp_path)
    main, argv = _tool_argvs(tmp_path)[tool]
    assert main([a.format("demoo") for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("error: config demoo not found: no such file, nor a built-in config; pass the path of a YAML "
                       "file or a built-in name: " + ", ".join(SHIPPED)), err


def test_the_help_of_c_names_the_built_in_configs(capsys):
    from oneflow_posmlp.cli import eval as eval_

    with pytest.raises(SystemExit):
        eval_.main(["--help"])
    assert "a built-in name (demo, posmlp_b," in " ".join(capsys.readouterr().out.split())
