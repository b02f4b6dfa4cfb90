"""TensorBoard events read back with tensorboard's EventAccumulator; the official CSV columns."""
import csv

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from oneflow_posmlp.engine.logger import CSV_COLUMNS, CsvLog, TensorBoardWriter


def test_scalars_and_text_read_back(tmp_path):
    w = TensorBoardWriter(str(tmp_path))
    for step in range(3):
        w.add_scalar("train/loss", 1.0 / (step + 1), step)
    w.add_text("config", "model: posmlp_t")
    w.close()
    acc = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    acc.Reload()
    assert [round(e.value, 4) for e in acc.Scalars("train/loss")] == [1.0, 0.5, 0.3333]
    assert acc.Tensors("config")[0].tensor_proto.string_val[0] == b"model: posmlp_t"


def test_csv_has_official_columns_and_resume_drops_later_epochs(tmp_path):
    path = tmp_path / "summary.csv"
    log = CsvLog(str(path))
    for e in range(3):
        log.append({"epoch": e, "train_loss": 1.0, "eval_top1": 50.0})
    CsvLog(str(path), start_epoch=2)  # resuming at epoch 2: rows 0, 1 stay
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    assert [r["epoch"] for r in rows] == ["0", "1"]
