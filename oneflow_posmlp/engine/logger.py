"""Run logging: per-rank log files, TensorBoard event files (torch-free), the official CSV columns."""
import csv
import logging
import os
import sys
import time

CSV_COLUMNS = ("epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "ema_eval_loss", "ema_eval_top1",
               "ema_eval_top5")


# This rank's log file for error lines (:func:`log_error`): named by the tool before the run opens it
# (:func:`expect_log`) or by :func:`setup_logging`; cleared when a tool starts (:func:`forget_log`).
_error_log = {}


def log_path(output_dir, rank):
    return os.path.join(output_dir, f"log_rank{rank}.txt")


def _formatter(rank):
    return logging.Formatter(f"%(asctime)s [rank {rank}] %(message)s", "%H:%M:%S")


def launched_rank():
    """This process's rank (``flow.env.get_rank()``: the launcher's ``RANK``, 0 for one process, where OneFlow's
    import sets ``RANK=-1``)."""
    import oneflow as flow

    return flow.env.get_rank()


def expect_log(output_dir, rank=None):
    """Name the log file this run will write (``output_dir/log_rank{rank}.txt``, ``rank`` as launched), so that an
    error before the run opens it (a layout that does not fit, a bad checkpoint) is written there by
    :func:`log_error` when ``output_dir`` exists. Creates nothing."""
    _error_log.update(path=log_path(output_dir, launched_rank() if rank is None else rank),
                      rank=launched_rank() if rank is None else rank)


def forget_log():
    """No log file named yet (a tool starting: one process may run several tools one after another)."""
    _error_log.clear()


def log_error(line):
    """Append ``line`` (an ``error: ...`` line) to this rank's log file at once, in the log's format, so that a
    rank's log shows why it stopped even when the launcher ends the other ranks right after. The file is created
    if the run had not opened it yet, but only in an output directory that exists: bad input to a new run writes
    nothing; a log it creates starts with :func:`first_line`, as every run's log. Returns the file's path, or None
    when nothing was written (no log named: the error came before the config named the output directory; the
    directory does not exist; it cannot be written)."""
    path = _error_log.get("path")
    if path is None or not os.path.isdir(os.path.dirname(path) or "."):
        return None
    fmt = _formatter(_error_log["rank"])
    lines = ([] if os.path.exists(path) else [first_line()]) + [line]
    try:
        with open(path, "a") as f:
            for text in lines:
                f.write(fmt.format(logging.LogRecord("oneflow_posmlp", logging.ERROR, __file__, 0, text, None, None))
                        + "\n")
    except OSError:
        return None
    return path


def first_line():
    """The first line of every run's log (and of a log an early error starts): which version ran, on which stack."""
    from ..version import version_text

    return version_text()


def setup_logging(output_dir, rank):
    """Every rank logs to ``output_dir/log_rank{rank}.txt`` (appended: a resumed run's lines follow the first
    run's), starting with :func:`first_line`; rank 0 also to the console."""
    logger = logging.getLogger("oneflow_posmlp")
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    logger.propagate = False
    fmt = _formatter(rank)
    os.makedirs(output_dir, exist_ok=True)
    expect_log(output_dir, rank)
    fh = logging.FileHandler(log_path(output_dir, rank))
    fh.setFormatter(fmt)
    logger.addHandler(fh)
    if rank == 0:
        sh = logging.StreamHandler(sys.stdout)
        sh.setFormatter(fmt)
        logger.addHandler(sh)
    logger.info(first_line())
    return logger


class TensorBoardWriter:
    """Scalars and text as TensorBoard event files, written with tensorboard's own protos and writer."""

    def __init__(self, logdir):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        os.makedirs(logdir, exist_ok=True)
        self._writer = EventFileWriter(logdir)

    def _write(self, summary, step):
        from tensorboard.compat.proto import event_pb2

        self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

    def add_scalar(self, tag, value, step):
        from tensorboard.compat.proto import summary_pb2

        self._write(summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=float(value))]), step)

    def add_text(self, tag, text, step=0):
        from tensorboard.compat.proto import summary_pb2, tensor_pb2, tensor_shape_pb2

        tensor = tensor_pb2.TensorProto(dtype=7, string_val=[text.encode()],  # DT_STRING
                                        tensor_shape=tensor_shape_pb2.TensorShapeProto(
                                            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)]))
        meta = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="text"))
        self._write(summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, tensor=tensor, metadata=meta)]),
                    step)

    def flush(self):
        self._writer.flush()

    def close(self):
        self._writer.close()


class CsvLog:
    """``summary.csv`` with the official columns; on resume, rows of epochs >= the resumed one are dropped."""

    def __init__(self, path, start_epoch=0):
        self.path = path
        rows = []
        if os.path.isfile(path):
            with open(path) as f:
                rows = [r for r in csv.DictReader(f) if int(r["epoch"]) < start_epoch]
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, CSV_COLUMNS)
            w.writeheader()
            w.writerows(rows)

    def append(self, row):
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, CSV_COLUMNS).writerow({k: row.get(k, "") for k in CSV_COLUMNS})
