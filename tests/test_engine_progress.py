"""The run's counters: one object, saved and restored in one place, in the checkpoint format of every version."""
import pytest

from conftest import tiny_train_opts
from oneflow_posmlp.checkpoint import read_oneflow_checkpoint
from oneflow_posmlp.config import load_config
from oneflow_posmlp.engine import Trainer
from oneflow_posmlp.engine.progress import Progress
from oneflow_posmlp.engine.step import StepResult

COUNTERS = {"epoch", "batch_in_epoch", "updates", "loss_sum", "loss_count", "best_top1", "best_epoch",
            "nonfinite_skips", "nonfinite_streak"}


def test_the_counters_round_trip_and_keep_the_checkpoint_keys():
    p = Progress(epoch=3, batch_in_epoch=2, updates=17, loss_sum=4.5, loss_count=6.0, best_top1=71.5, best_epoch=2,
                 nonfinite_skips=1, nonfinite_streak=0)
    assert set(p.state_dict()) == COUNTERS  # the top-level keys training checkpoints have always had
    q = Progress()
    q.load_state_dict(dict(p.state_dict(), model={}, rng={}))  # a checkpoint: counters beside the rest
    assert q == p


def test_a_checkpoint_of_an_earlier_version_loads_without_the_newer_counters():
    old = Progress(epoch=1, updates=4, nonfinite_skips=2, nonfinite_streak=1).state_dict()
    del old["nonfinite_skips"], old["nonfinite_streak"]
    p = Progress(nonfinite_skips=9, nonfinite_streak=9)
    p.load_state_dict(old)
    assert (p.epoch, p.updates, p.nonfinite_skips, p.nonfinite_streak) == (1, 4, 0, 0)
    with pytest.raises(KeyError, match="updates"):  # a required counter missing is not papered over
        Progress().load_state_dict({k: v for k, v in old.items() if k != "updates"})


def test_updates_epochs_and_the_best():
    p = Progress(nonfinite_streak=2)
    p.applied(StepResult(loss=1.0, loss_sum=2.0, micro_batches=2, grad_norm=0.5))
    p.applied(StepResult(loss=3.0, loss_sum=3.0, micro_batches=1, grad_norm=0.5))
    assert p.mean_loss() == pytest.approx(5.0 / 3) and p.nonfinite_streak == 0
    p.skipped()
    p.skipped()
    assert (p.nonfinite_skips, p.nonfinite_streak) == (2, 2)
    p.batch_in_epoch = 5
    assert p.mid_epoch
    p.end_epoch()
    assert (p.epoch, p.batch_in_epoch, p.loss_sum, p.loss_count, p.mid_epoch) == (1, 0, 0.0, 0.0, False)
    assert not p.record_best({"epoch": 0})  # no evaluation
    assert p.record_best({"epoch": 0, "eval_top1": 10.0}) and (p.best_top1, p.best_epoch) == (10.0, 0)
    assert not p.record_best({"epoch": 1, "eval_top1": 10.0})  # a tie keeps the earlier best
    assert p.record_best({"epoch": 2, "eval_top1": 12.0}) and p.best_epoch == 2


def test_a_trainer_saves_and_resumes_its_progress(tiny_demo_root, tmp_path):
    """The counters of a checkpoint are the trainer's Progress, and a resumed trainer starts from them."""
    cfg = load_config("configs/demo.yaml", tiny_train_opts(tiny_demo_root, **{"train.epochs": 1,
                                                                              "data.limit_train_batches": 2}))
    trainer = Trainer(cfg, output_dir=str(tmp_path))
    trainer.fit()
    state = read_oneflow_checkpoint(tmp_path / "last")
    assert {k: state[k] for k in COUNTERS} == trainer.progress.state_dict()
    assert (trainer.epoch, trainer.updates) == (1, 2)  # the trainer's counters are its Progress's
    resumed = Trainer(cfg, output_dir=str(tmp_path), resume="auto")
    assert resumed.progress == trainer.progress
