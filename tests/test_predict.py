"""posmlp-predict (oneflow_posmlp/cli/predict.py, tools/predict.py) and oneflow_posmlp/predict.py: top-k of image
files/folders, class names, bad files."""
import json
import os
import sys

import pytest

from conftest import tiny_train_opts
from launch import run_bounded
from oneflow_posmlp.checkpoint import load_weights
from oneflow_posmlp.cli import predict as predict_tool
from oneflow_posmlp.config import load_config
from oneflow_posmlp.engine import Trainer
from oneflow_posmlp.predict import class_names, collect_images, read_labels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained(tiny_demo_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run"))
    cfg = load_config("configs/demo.yaml", tiny_train_opts(tiny_demo_root, **{"train.epochs": 1}))
    Trainer(cfg, output_dir=out).fit()
    return os.path.join(out, "last")


def run_predict(capsys, weights, root, *args):
    code = predict_tool.main(["-c", "configs/demo.yaml", "--weights", weights, *args, "--opts",
                              *tiny_train_opts(root)])
    out, err = capsys.readouterr()
    return code, out, err


def test_training_checkpoint_stores_the_class_names(trained, tiny_demo_root):
    assert class_names(load_weights(trained)[1]) == sorted(os.listdir(os.path.join(tiny_demo_root, "val")))


def test_predict_on_the_validation_images_reproduces_the_eval_top1(trained, tiny_demo_root, capsys):
    res = run_bounded([sys.executable, os.path.join(ROOT, "tools", "eval.py"), "-c", "configs/demo.yaml",
                       "--weights", trained, "--opts", *tiny_train_opts(tiny_demo_root)], capture_output=True,
                      text=True, timeout=300, cwd=ROOT, env=dict(os.environ, GLOG_minloglevel="3"))
    assert res.returncode == 0, res.stderr
    evaluated = json.loads(res.stdout.strip().splitlines()[-1])
    val = os.path.join(tiny_demo_root, "val")
    code, out, err = run_predict(capsys, trained, tiny_demo_root, "--json", "--batch-size", "5", val)
    assert code == 0, err
    preds = json.loads(out)["predictions"]
    assert len(preds) == evaluated["images"] == 16
    correct = sum(p["top"][0]["class"] == os.path.basename(os.path.dirname(p["path"])) for p in preds)
    assert 100.0 * correct / len(preds) == pytest.approx(evaluated["top1"], abs=1e-3)
    probs = [t["prob"] for t in preds[0]["top"]]
    assert len(probs) == 4 and probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-5)


def test_bad_files_are_reported_per_file_and_the_rest_predicted(trained, tiny_demo_root, tmp_path, capsys):
    good = collect_images([os.path.join(tiny_demo_root, "val", "circle")])[0][0]
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a_good.jpg").write_bytes(open(good, "rb").read())
    (folder / "b_truncated.jpg").write_bytes(open(good, "rb").read()[:40])
    (folder / "c_text.png").write_text("not an image")
    code, out, err = run_predict(capsys, trained, tiny_demo_root, "--topk", "2", str(folder),
                                 str(tmp_path / "missing.jpg"))
    assert code == 0
    assert "a_good.jpg" in out and len(out.strip().splitlines()) == 3  # header + 2 ranks of the readable image
    assert any(name in out for name in ("circle", "square", "triangle", "cross"))
    for bad in ("b_truncated.jpg", "c_text.png", "missing.jpg"):
        assert any(line.startswith("error: ") and bad in line for line in err.splitlines()), err


def test_nothing_readable_exits_2_with_an_error_line(trained, tiny_demo_root, tmp_path, capsys):
    (tmp_path / "x.jpg").write_text("garbage")
    code, out, err = run_predict(capsys, trained, tiny_demo_root, str(tmp_path / "x.jpg"))
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: no image could be read")
    assert out == ""  # no table of errors alone


def test_an_empty_folder_is_one_error_line_and_no_table(trained, tiny_demo_root, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = run_predict(capsys, trained, tiny_demo_root, str(empty))
    assert code == 2 and out == "", out
    assert err.strip().splitlines() == [f"error: no image to predict ({empty}: folder holds no images (.jpg, .jpeg, "
                                        f".png, .ppm, .bmp, .pgm, .tif, .tiff, .webp)); pass image files or folders "
                                        f"holding images"]


def test_labels_file_names_the_classes_and_must_fit_the_head(trained, tiny_demo_root, tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("A\nB\nC\nD\n")
    assert read_labels(str(labels)) == ["A", "B", "C", "D"]
    val = os.path.join(tiny_demo_root, "val", "cross")
    code, out, err = run_predict(capsys, trained, tiny_demo_root, "--json", "--labels", str(labels), val)
    assert code == 0 and {t["class"] for p in json.loads(out)["predictions"] for t in p["top"]} <= set("ABCD")
    labels.write_text("A\nB\n")
    code, out, err = run_predict(capsys, trained, tiny_demo_root, "--labels", str(labels), val)
    assert code == 2 and "2 class names for a model of 4 classes" in err
