"""What a run reports: a line every train.log_interval updates and at the epoch's end, TensorBoard scalars,
the validation line, the CSV row."""
import csv
from types import SimpleNamespace

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from oneflow_posmlp.engine.monitor import Monitor
from oneflow_posmlp.engine.progress import Progress
from oneflow_posmlp.engine.step import StepResult

MAIN = SimpleNamespace(is_main=True, data_parallel=1)


class Lines:
    def __init__(self):
        self.lines = []

    def info(self, msg):
        self.lines.append(msg)

    warning = info


def _monitor(tmp_path, **log):
    cfg = {"log": dict({"tensorboard": True, "csv": True, "progress": False}, **log), "train": {"log_interval": 2}}
    mfu = SimpleNamespace(of=lambda speed: None)
    return Monitor(cfg, MAIN, str(tmp_path), Lines(), mfu)


def test_update_lines_at_the_interval_and_the_epochs_end(tmp_path):
    m = _monitor(tmp_path)
    p = Progress()
    m.start_epoch(p, total=3)
    for updates in (1, 2, 3):
        m.micro_batch(8)
        p.updates = updates
        m.update(p, StepResult(0.5, 0.5, 1, 1.5), lr=1e-3, data_time=0.01, epoch_end=updates == 3, loss_scale=1024.0)
    m.end_epoch()
    m.close()
    assert [line.split(":")[0] for line in m.log.lines] == ["epoch 0 update 2", "epoch 0 update 3"]
    assert "loss 0.5000 lr 1.000e-03 grad_norm 1.500" in m.log.lines[0] and "MFU nan" in m.log.lines[0]
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [2, 3]
    assert [e.value for e in acc.Scalars("train/loss_scale")] == [1024.0, 1024.0]
    assert "train/mfu" not in acc.Tags()["scalars"]  # NaN (no known peak) is not written


def test_the_validation_line_and_the_csv_row(tmp_path):
    m = _monitor(tmp_path)
    row = {"epoch": 0, "train_loss": 2.0, "eval_loss": 1.0, "eval_top1": 50.0, "eval_top5": 90.0,
           "ema_eval_loss": 1.1, "ema_eval_top1": 40.0, "ema_eval_top5": 80.0}
    m.evaluation(0, row, 300)
    m.epoch_row(row)
    m.close()
    assert m.log.lines == ["epoch 0 val: loss 1.0000 top-1 50.00% top-5 90.00% | EMA top-1 40.00% top-5 80.00% "
                           "(300 images)"]
    with open(tmp_path / "summary.csv") as f:
        assert next(csv.DictReader(f))["ema_eval_top1"] == "40.0"


def test_not_the_main_rank_writes_no_tensorboard_or_csv(tmp_path):
    m = Monitor({"log": {"tensorboard": True, "csv": True, "progress": False}, "train": {"log_interval": 1}},
                SimpleNamespace(is_main=False, data_parallel=2), str(tmp_path), Lines(), None)
    m.corrupt_images(0, 5)
    assert m.tb is None and m.csv is None and not m.log.lines and not (tmp_path / "tb").exists()
