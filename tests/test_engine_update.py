"""engine/update.py: the update routine draws every micro-batch's randomness (Mixup/CutMix, drop-path masks, the
step's OneFlow draws) from ``(train.seed, update, micro)`` as the trainer's loop does, whatever the global RNGs
hold; after an applied update the lr schedule and the EMA move, after a skipped one neither does."""
import numpy as np
import oneflow as flow

from oneflow_posmlp.config import load_config
from oneflow_posmlp.data import build_mixup, build_train_criterion
from oneflow_posmlp.engine.optim import build_ema
from oneflow_posmlp.engine.randomness import numpy_seeded
from oneflow_posmlp.engine.step import build_training, micro_batch_keep
from oneflow_posmlp.engine.update import Updater
from oneflow_posmlp.models import build_model
from oneflow_posmlp.models.drop import drop_path_modules
from oneflow_posmlp.parallel import ParallelContext
from conftest import TINY_MODEL_CFG

ACCUM = 2


def _built(seed=0, ema=False):
    """An updater over the eager step of a tiny model with drop path 0.3 and Mixup/CutMix (the shipped recipe's
    kinds of randomness), 2 micro-batches of 4 per update; the model's initial weights do not depend on ``seed``."""
    cfg = load_config("configs/demo.yaml", ["aug.mixup=0.8", "aug.cutmix=1.0", f"train.seed={seed}",
                                            f"train.grad_accum_steps={ACCUM}", f"train.batch_size={4 * ACCUM}",
                                            f"train.ema={str(ema).lower()}", "train.clip_grad=1.0"])
    cfg["model"] = dict(TINY_MODEL_CFG, img_size=32, win_size=[4, 4, 2, 1], gamma=[2, 4, 8, 8], drop_path_rate=0.3)
    flow.manual_seed(0)
    model = build_model(cfg["model"])
    ctx = ParallelContext(cfg["dist"])
    ctx.apply(model)
    mixup = build_mixup(cfg)
    training = build_training(cfg, model, build_train_criterion(cfg, mixup), ctx, updates_per_epoch=4)
    updater = Updater(training.step, training.scheduler, ctx, seed, drop_path_modules(model), model, mixup=mixup,
                      ema=build_ema(model, cfg["train"]))
    return updater, model


def _batches(updates):
    rng = np.random.default_rng(7)
    return [[(flow.tensor(rng.standard_normal((4, 3, 32, 32)).astype(np.float32)),
              flow.tensor(rng.integers(0, 5, 4))) for _ in range(ACCUM)] for _ in range(updates)]


def _weights(model):
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def _disturb(seed):
    """Move the global RNGs (OneFlow's, NumPy's) somewhere else: what the updater draws must not depend on them."""
    flow.manual_seed(seed)
    np.random.seed(seed)
    np.random.rand(3)


def _trainers_loop(updater, batches):
    """The trainer's loop as written before the update routine (engine/trainer.py): each micro-batch seeded
    ``(train.seed, updates, micro)``: Mixup in ``numpy_seeded`` with the data-parallel rank, the drop-path keep
    masks, the step object; the schedule after the update."""
    ctx, updates = updater.ctx, 0
    for micro_batches in batches:
        for i, (x, y) in enumerate(micro_batches):
            step = (updater.seed, updates, i)
            with numpy_seeded(*step, ctx.data_rank):
                x, y = updater.mixup(x, y)
            keep = micro_batch_keep(updater.drop_paths, len(x), ctx, step)
            result = updater.step.run(x, y, keep, step)
        assert result.finite
        updates += 1
        updater.scheduler.step_update(updates)
    return updates


def test_the_updater_draws_the_trainers_seeds():
    runs = []
    for seed, routine in ((0, "updater"), (0, "trainer"), (0, "updater"), (1, "updater")):
        batches = _batches(3)  # new tensors each run: flowvision's Mixup mixes in place
        _disturb(len(runs) + 11)
        updater, model = _built(seed)
        _disturb(len(runs) + 23)
        if routine == "updater":
            updates = 0
            for micro_batches in batches:
                result, updates = updater.update(micro_batches, updates)
                assert result.finite and result.micro_batches == ACCUM
        else:
            updates = _trainers_loop(updater, batches)
        assert updates == 3
        runs.append((_weights(model), updater.lr))
    (a, lr_a), (b, lr_b), (c, lr_c), (d, lr_d) = runs
    for k in a:
        assert np.array_equal(a[k], b[k]) and np.array_equal(a[k], c[k]), k
    assert lr_a == lr_b == lr_c == lr_d
    # another train.seed draws other masks and mixes: the randomness is the seed's, and it reaches the weights
    assert any(not np.array_equal(a[k], d[k]) for k in a)


def test_after_update_moves_the_schedule_and_the_ema_after_an_applied_update_only():
    updater, model = _built(ema=True)
    ema, decay = updater.ema, updater.ema.decay
    ema_before, lr_before = _weights(ema.module), updater.lr
    (x0, y0), (x1, y1) = _batches(1)[0]
    nan = flow.full_like(x0, float("nan"))
    result, updates = updater.update([(nan, y0), (x1, y1)], 0)  # a non-finite loss: skipped, nothing moves
    assert not result.finite and updates == 0
    assert updater.lr == lr_before
    assert all(np.array_equal(v, ema_before[k]) for k, v in _weights(ema.module).items())
    result, updates = updater.update([(x0, y0), (x1, y1)], 0)
    assert result.finite and updates == 1
    lr_after = updater.lr
    assert lr_after != lr_before  # the warmup's next update
    updater.scheduler.step_update(1)  # update 1's lr: where after_update put the schedule
    assert updater.lr == lr_after
    after, weights = _weights(ema.module), _weights(model)
    moved = [k for k, v in ema_before.items() if v.dtype.kind == "f" and not np.array_equal(v, weights[k])]
    assert moved
    for k in moved:  # ModelEmaV2: ema <- decay * ema + (1 - decay) * model
        np.testing.assert_allclose(after[k], decay * ema_before[k] + (1 - decay) * weights[k], rtol=1e-5, atol=1e-6)
