"""oneflow_posmlp/checkpoint/load.py: the one loader of weights into a built model, and what each entry point says
when the weights do not fit: a classifier of another size names the fix that entry point accepts; weights of
another architecture are one line, from the config stored with them when they carry it, else the count and the
first mismatches, naming the file."""
import pytest

from conftest import tiny_train_opts
from oneflow_posmlp.checkpoint import CheckpointError, load_pretrained, save_weights
from oneflow_posmlp.cli import eval as eval_tool
from oneflow_posmlp.cli import export_onnx as export_tool
from oneflow_posmlp.cli import predict as predict_tool
from oneflow_posmlp.config import load_config
from oneflow_posmlp.engine import Trainer
from oneflow_posmlp.models import build_model, create_model

DEMO = "configs/demo.yaml"


def demo_model_cfg(**changes):
    return dict(load_config(DEMO)["model"], **changes)


def weights_of(path, with_config=True, **changes):
    """Safetensors weights of the demo model with ``changes``, carrying its config unless ``with_config`` is False."""
    model = build_model(demo_model_cfg(**changes))
    meta = {"model": model.config} if with_config else {}
    save_weights({k: v.numpy() for k, v in model.state_dict().items()}, path, meta)
    return str(path)


def one_error_line(err):
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "\n" not in lines[0], err
    return lines[0]


def test_another_architecture_is_one_line_from_the_stored_config_else_the_count_and_first_mismatches(tmp_path):
    model = build_model(demo_model_cfg())
    with_config = weights_of(tmp_path / "a", gamma=[4, 4, 8, 16])
    with pytest.raises(CheckpointError) as err:
        load_pretrained(model, with_config)
    assert str(err.value) == (f"{with_config}: the checkpoint is of another model (model.gamma: checkpoint "
                              f"[4, 4, 8, 16], config {model.config['gamma']!r}); use the config the weights were "
                              f"made with")
    bare = weights_of(tmp_path / "b", with_config=False, embed_dims=[16, 32, 64, 64])
    with pytest.raises(CheckpointError) as err:
        load_pretrained(model, bare)
    msg = str(err.value)
    assert msg.startswith(f"{bare}: the checkpoint does not fit the model (") and "\n" not in msg
    assert msg.count("shape mismatch: ") == 3 and msg.endswith("; ...)")
    assert "(13 problems: shape mismatch: levels.3.pool.conv.weight: " in msg


def test_create_model_names_num_classes(tmp_path):
    path = weights_of(tmp_path / "w", num_classes=10)
    over = {k: v for k, v in demo_model_cfg().items() if k not in ("name", "num_classes")}
    with pytest.raises(CheckpointError, match=r"the weights have a 10-class classifier, the model 1000 classes: "
                                              r"pass num_classes=10 to create_model"):
        create_model("posmlp_t", weights=path, **over)
    assert create_model("posmlp_t", weights=path, num_classes=10, **over).num_classes == 10


def test_init_from_another_architecture_is_one_line_naming_the_file(tiny_demo_root, tmp_path):
    cfg = load_config(DEMO, tiny_train_opts(tiny_demo_root, **{"train.epochs": 1}))
    path = weights_of(tmp_path / "w", gamma=[4, 4, 8, 16])
    with pytest.raises(CheckpointError, match=rf"^--init {path}: the checkpoint is of another model \(model.gamma: "):
        Trainer(cfg, output_dir=str(tmp_path / "out"), init=path)


def _run(tool, capsys, *args):
    code = tool.main(list(args))
    return code, one_error_line(capsys.readouterr().err)


def _run_tool(tool, capsys, path, root, tmp_path):
    opts = ["--opts", *tiny_train_opts(root)]
    if tool == "eval":
        return _run(eval_tool, capsys, "-c", DEMO, "--weights", path, *opts)
    if tool == "predict":
        return _run(predict_tool, capsys, "-c", DEMO, "--weights", path, root, *opts)
    return _run(export_tool, capsys, "-c", DEMO, "--weights", path, "--out", str(tmp_path / "m.onnx"), *opts)


@pytest.mark.parametrize("tool", ["eval", "predict", "export"])
def test_each_tool_names_the_fix_it_accepts_for_a_classifier_of_another_size(tool, tiny_demo_root, tmp_path, capsys):
    path = weights_of(tmp_path / "w", num_classes=10)
    code, line = _run_tool(tool, capsys, path, tiny_demo_root, tmp_path)
    assert code == 2
    assert line == (f"error: {path}: the weights have a 10-class classifier, the model 4 classes: pass --opts "
                    f"model.num_classes=10")


@pytest.mark.parametrize("tool", ["eval", "predict", "export"])
def test_the_tools_name_the_other_architecture_in_one_line(tool, tiny_demo_root, tmp_path, capsys):
    path = weights_of(tmp_path / "w", embed_dims=[16, 32, 64, 64])
    code, line = _run_tool(tool, capsys, path, tiny_demo_root, tmp_path)
    assert code == 2 and line.startswith(f"error: {path}: the checkpoint is of another model (model.embed_dims: "
                                         f"checkpoint [16, 32, 64, 64], config [")
