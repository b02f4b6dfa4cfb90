"""Tensor, pipeline and 2-D (data x tensor) parallelism against one process.

Each layout runs tools/train.py for 3 AdamW updates (lr warm-up, clipping at 1.0, the demo's BN-free variant:
``model.stem_norm=LN``, because BatchNorm under data parallelism normalises per rank like DDP without SyncBN)
and must log the same loss and gradient norm at every update as one process, and end with the same weights
and AdamW moments within 1e-6 (measured: at most 1.2e-8). Checkpoints are gathered to complete tensors, so a
tensor-parallel checkpoint resumes in a data-parallel run and in one process, and evaluates in one process.
"""
import json
import os

import pytest

from launch import ROOT, launcher, max_state_diff, run, train, train_cmd, updates
from oneflow_posmlp.models import build_model
from oneflow_posmlp.parallel import LayoutError
from oneflow_posmlp.parallel.pipeline import level_stages, module_stages
from oneflow_posmlp.parallel.tensor_parallel import check_tensor_parallel

pytestmark = pytest.mark.distributed
TOL = 1e-6
LAYOUTS = {
    "tensor_parallel_2": (2, ["dist.tensor_parallel=2"]),
    "pipeline_parallel_2": (2, ["dist.pipeline_parallel=2"]),
    "data2_x_tensor2": (4, ["dist.data_parallel=2", "dist.tensor_parallel=2"]),
}


@pytest.fixture(scope="module")
def one_rank(tiny_demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("one_rank")
    train(tiny_demo_root, out, 1, "model.stem_norm=LN")
    return out


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_equals_one_rank(layout, one_rank, tiny_demo_root, tmp_path):
    ranks, opts = LAYOUTS[layout]
    train(tiny_demo_root, tmp_path, ranks, "model.stem_norm=LN", *opts)
    assert len(updates(one_rank)) == 3 and updates(tmp_path) == updates(one_rank)
    assert max_state_diff(one_rank / "last", tmp_path / "last") <= TOL
    assert f"on {ranks} rank(s)" in open(tmp_path / "log_rank0.txt").read()


def test_tensor_parallel_checkpoint_loads_into_other_layouts(tiny_demo_root, tmp_path):
    """1 epoch with tensor parallelism, then epoch 2 resumed on 2 data-parallel ranks and on 1 rank: both equal
    an uninterrupted 2-epoch run of one process; the checkpoint also evaluates in one process."""
    two_epochs = {"train.epochs": 2}
    train(tiny_demo_root, tmp_path / "ref", 1, "model.stem_norm=LN", **two_epochs)
    train(tiny_demo_root, tmp_path / "tp", 2, "model.stem_norm=LN", "dist.tensor_parallel=2")
    for name, ranks in (("dp", 2), ("single", 1)):
        run(["cp", "-r", str(tmp_path / "tp"), str(tmp_path / name)])
        train(tiny_demo_root, tmp_path / name, ranks, "model.stem_norm=LN", "--resume", "auto", **two_epochs)
        assert max_state_diff(tmp_path / "ref" / "last", tmp_path / name / "last") <= TOL, name
    res = run(launcher(1) + [os.path.join(ROOT, "tools", "eval.py"), "-c", "configs/demo.yaml", "--weights",
                             str(tmp_path / "tp" / "last"), "--opts", f"data.root={tiny_demo_root}", "data.demo=false",
                             "data.num_workers=0", "train.batch_size=16", "model.stem_norm=LN",
                             f"output.dir={tmp_path / 'eval'}"])
    logged = open(tmp_path / "tp" / "log_rank0.txt").read()
    top1 = json.loads(res.stdout.strip().splitlines()[-1])["top1"]
    assert f"top-1 {top1:.2f}%" in logged


def test_layout_that_does_not_fit_is_refused_on_every_rank(tiny_demo_root, tmp_path):
    """num_classes 5 does not split over 2 tensor-parallel ranks: both ranks exit with the error, no hang."""
    res = run(launcher(2) + train_cmd(tiny_demo_root, tmp_path, "dist.tensor_parallel=2", "data.demo=false",
                                      "data.synthetic=true", "model.num_classes=5"), expect_ok=False)
    assert res.returncode != 0
    assert res.stderr.count("dist.tensor_parallel=2 does not divide num_classes 5") == 2, res.stderr[-2000:]


def test_split_checks(tiny_model_cfg):
    model = build_model(tiny_model_cfg)  # hidden widths 32/64/128/128, 5 classes
    check_tensor_parallel(model, 1)
    with pytest.raises(LayoutError, match="does not divide num_classes 5"):
        check_tensor_parallel(model, 2)
    with pytest.raises(LayoutError, match="does not divide the block's hidden width"):
        check_tensor_parallel(build_model(dict(tiny_model_cfg, num_classes=6)), 3)
    assert level_stages(4, 2) == [0, 0, 1, 1] and level_stages(4, 4) == [0, 1, 2, 3]
    with pytest.raises(LayoutError, match="at most 4 pipeline stages"):
        level_stages(4, 5)
    stages = module_stages(model, 2)
    assert stages["patch_embed"] == 0 and stages["levels.3"] == 1 and stages["head"] == 1
