"""Run logging: per-rank log files, TensorBoard event files (torch-free), the official CSV columns."""
import csv
import logging
import os
import sys
import time

CSV_COLUMNS = ("epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "ema_eval_loss", "ema_eval_top1",
               "ema_eval_top5")


def setup_logging(output_dir, rank):
    """Every rank logs to ``output_dir/log_rank{rank}.txt``; rank 0 also to the console."""
    logger = logging.getLogger("oneflow_posmlp")
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    logger.propagate = False
    fmt = logging.Formatter(f"%(asctime)s [rank {rank}] %(message)s", "%H:%M:%S")
    os.makedirs(output_dir, exist_ok=True)
    fh = logging.FileHandler(os.path.join(output_dir, f"log_rank{rank}.txt"))
    fh.setFormatter(fmt)
    logger.addHandler(fh)
    if rank == 0:
        sh = logging.StreamHandler(sys.stdout)
        sh.setFormatter(fmt)
        logger.addHandler(sh)
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
