"""Drop path and dropout (``models/drop.py``) on local tensors and on global tensors of several ranks, eagerly
and inside an nn.Graph: what each rank draws is checked by ``tests/drop_masks_job.py``."""
import json

import numpy as np
import oneflow as flow
import pytest

from launch import ROOT, launcher, run_bounded
from oneflow_posmlp.models.drop import (DropPath, drop_path_keep, drop_path_modules, scale_per_sample,
                                        set_drop_path_keep)
from oneflow_posmlp.models import build_model


def test_drop_path_uses_the_given_keep_mask_per_sample():
    x = flow.randn(4, 3, 5, 6)
    dp = DropPath(0.25).train()
    dp.keep = flow.tensor([1.0, 0.0, 1.0, 0.0])
    expect = x.numpy() * np.array([1, 0, 1, 0], dtype=np.float32)[:, None, None, None] / 0.75
    np.testing.assert_allclose(dp(x).numpy(), expect, rtol=1e-6)
    assert dp.eval()(x) is x


def test_drop_path_draws_its_own_mask_without_one():
    flow.manual_seed(0)
    y = DropPath(0.5).train()(flow.ones(4000, 2))
    kept = y.numpy()[:, 0]
    assert set(np.unique(kept)) == {0.0, 2.0} and (y.numpy()[:, 0] == y.numpy()[:, 1]).all()
    assert abs((kept > 0).mean() - 0.5) < 0.03


def test_scale_per_sample_equals_broadcast():
    x, s = flow.randn(3, 4, 5, 6), flow.tensor([0.5, 2.0, 0.0])
    np.testing.assert_allclose(scale_per_sample(x, s).numpy(), x.numpy() * s.numpy()[:, None, None, None])


def test_step_keep_masks_are_rows_of_one_global_draw(tiny_model_cfg):
    model = build_model(dict(tiny_model_cfg, drop_path_rate=0.3))
    modules = drop_path_modules(model)
    rates = [m.drop_prob for m in modules]
    assert len(rates) == 3 and rates == sorted(rates)  # the first block's rate is 0: it has no mask
    whole = drop_path_keep(rates, 8, [42, 5, 0])
    assert whole.shape == (8, 3)
    np.testing.assert_array_equal(drop_path_keep(rates, 8, [42, 5, 0], rows=slice(4, 8)), whole[4:])
    assert not np.array_equal(whole, drop_path_keep(rates, 8, [42, 6, 0]))  # another update, another draw
    many = drop_path_keep(rates, 20000, [1, 2, 3])
    np.testing.assert_allclose(1 - many.mean(0), rates, atol=0.02)
    set_drop_path_keep(modules, flow.tensor(whole))
    np.testing.assert_array_equal(modules[2].keep.numpy(), whole[:, 2])
    set_drop_path_keep(modules, None)
    assert all(m.keep is None for m in modules)


def _job(tmp_path, ranks):
    out = tmp_path / f"r{ranks}"
    out.mkdir()
    res = run_bounded(launcher(ranks) + [str(ROOT + "/tests/drop_masks_job.py"), str(out)], capture_output=True,
                      text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(ranks)]


@pytest.mark.distributed
def test_masks_on_two_data_parallel_ranks(tmp_path):
    """Rows of the global batch get their own masks on each rank; the drop path mask is the one a global tensor
    on one process draws (a broadcast draw, then split like the batch); OneFlow's own dropout would repeat one
    pattern on both ranks."""
    one, (r0, r1) = _job(tmp_path, 1)[0], _job(tmp_path, 2)
    assert r0["sample_keep"] + r1["sample_keep"] == one["sample_keep"]
    assert r0["graph_drop_path"] + r1["graph_drop_path"] == one["graph_drop_path"]
    for key in ("dropout", "graph_dropout"):
        a, b = np.array(r0[key]), np.array(r1[key])
        assert a.shape == b.shape == (8, 64) and not np.array_equal(a, b), key
        assert abs((a > 0).mean() - 0.5) < 0.1, key
    assert r0["oneflow_dropout"] == r1["oneflow_dropout"]  # why models/drop.py draws dropout masks itself
    assert r0["divergence_equal"] == 0.0 and r0["divergence_changed"] >= 1.0


@pytest.mark.distributed
def test_masks_on_a_data_by_tensor_parallel_grid(tmp_path):
    """4 ranks as [dp 2, tp 2]: the tensor-parallel ranks of one shard draw the same masks (they hold the same
    activations), the two shards draw different ones; eager and in a graph."""
    ranks = _job(tmp_path, 4)
    for key in ("sample_keep", "dropout", "graph_dropout", "graph_drop_path"):
        by_shard = {}
        for r in ranks:
            by_shard.setdefault(r["data_rank"], []).append(r[key])
        assert all(a == b for a, b in by_shard.values()), key
        assert by_shard[0][0] != by_shard[1][0], key
