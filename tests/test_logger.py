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


def test_an_error_line_goes_to_the_named_log_first_and_is_appended_to_an_open_one(tmp_path):
    import re

    from oneflow_posmlp.engine import logger

    logger.forget_log()
    assert logger.log_error("error: nowhere to go") is None  # no log named yet: nothing written
    assert logger.launched_rank() == 0  # one process (OneFlow's import sets RANK=-1 then)
    logger.expect_log(tmp_path / "run")  # names the file; creates nothing
    logger.expect_log(tmp_path / "run", 3)
    assert logger.log_error("error: a new run's bad input") is None and not (tmp_path / "run").exists()
    (tmp_path / "run").mkdir()  # an output directory that exists gets the rank's log with the error
    path = logger.log_error("error: dist layout does not fit")
    assert path == str(tmp_path / "run" / "log_rank3.txt")
    lines = open(path).read().splitlines()
    assert len(lines) == 2 and re.fullmatch(r"\d\d:\d\d:\d\d \[rank 3\] error: dist layout does not fit", lines[1])
    assert lines[0].endswith(f"[rank 3] {logger.first_line()}")  # a log the error starts names the version first
    assert logger.log_error("error: a second line") == path  # an existing log: appended, no second version line
    assert len(open(path).read().splitlines()) == 3
    # once the run's log is open, the error line follows what it logged, in its format
    log = logger.setup_logging(str(tmp_path / "other"), 1)
    log.info("model custom: 88,253 parameters")
    logger.log_error("error: data folder x does not exist")
    lines = open(tmp_path / "other" / "log_rank1.txt").read().splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == [logger.first_line(), "model custom: 88,253 parameters",
                                                         "error: data folder x does not exist"]
    logger.forget_log()  # the next tool in this process: the previous run's log is not its log
    assert logger.log_error("error: later") is None
    assert "later" not in open(tmp_path / "other" / "log_rank1.txt").read()
    for h in log.handlers:
        h.close()
    log.handlers.clear()
