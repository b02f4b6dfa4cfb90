"""What a run reports as it trains: a log line per ``train.log_interval`` updates (loss, lr, gradient norm,
img/s, MFU, data time) on every rank's log, TensorBoard scalars and ``summary.csv`` rows on rank 0, the
epoch's validation line, skipped updates and corrupt images, and a progress bar on a terminal.
"""
import math
import os
import sys
import time

from ..config import dump_config
from .logger import CsvLog, TensorBoardWriter

EVAL_KEYS = ("eval_loss", "eval_top1", "eval_top5", "ema_eval_loss", "ema_eval_top1", "ema_eval_top5")


class Monitor:
    """``cfg``: the run's config (``log:``, ``train.log_interval``); ``log``: the run's logger; ``mfu``: its
    :class:`~oneflow_posmlp.engine.mfu.TrainMfu`; ``start_epoch``: the epoch the run starts at (CSV rows from it
    on are dropped: a resume writes them again). TensorBoard and CSV on the main rank only."""

    def __init__(self, cfg, ctx, out, log, mfu, start_epoch=0):
        self.cfg, self.ctx, self.log, self.mfu = cfg, ctx, log, mfu
        main = ctx.is_main
        self.tb = TensorBoardWriter(os.path.join(out, "tb")) if cfg["log"]["tensorboard"] and main else None
        self.csv = CsvLog(os.path.join(out, "summary.csv"), start_epoch) if cfg["log"]["csv"] and main else None
        self.bar = _NoProgress()
        self._window_start, self._window_images = time.time(), 0

    def config(self):
        if self.tb:
            self.tb.add_text("config", "```\n" + dump_config(self.cfg) + "\n```", 0)

    # ----------------------------------------------------------------- updates
    def start_epoch(self, progress, total):
        """A bar only on a terminal: in a log file (CI, > file) each refresh would be a line; log lines always."""
        show = self.ctx.is_main and self.cfg["log"]["progress"] and sys.stderr.isatty()
        self.bar = _progress(total, progress.batch_in_epoch, f"epoch {progress.epoch}", show)
        self._window_start, self._window_images = time.time(), 0

    def micro_batch(self, images):
        """A micro-batch of ``images`` (global) was taken."""
        self._window_images += images
        self.bar.update(1)

    def update(self, progress, result, lr, data_time, epoch_end, loss_scale=None):
        """After an applied update (``progress.updates`` counts it; ``lr``: the rate it ran at; ``loss_scale``:
        the AMP loss scale, or None): log every ``train.log_interval`` updates and at the epoch's end, with the
        speed since the last line."""
        if not (progress.updates % self.cfg["train"]["log_interval"] == 0 or epoch_end):
            return
        speed = self._window_images / max(time.time() - self._window_start, 1e-9)
        self._log_step(progress, result.loss, lr, result.grad_norm, speed, data_time)
        if self.tb and loss_scale is not None:
            self.tb.add_scalar("train/loss_scale", loss_scale, progress.updates)
        self.bar.set_postfix(loss=f"{result.loss:.3f}", lr=f"{lr:.2e}")
        self._window_start, self._window_images = time.time(), 0

    def _log_step(self, progress, loss, lr, grad_norm, speed, data_time):
        mfu = self.mfu.of(speed)  # engine/mfu.py; NaN where the device's peak is unknown
        mfu = float("nan") if mfu is None else mfu
        self.log.info(f"epoch {progress.epoch} update {progress.updates}: loss {loss:.4f} lr {lr:.3e} "
                      f"grad_norm {grad_norm:.3f} {speed:.1f} img/s MFU {mfu:.3f} data {data_time * 1000:.0f} ms")
        if self.tb:
            for tag, value in (("train/loss", loss), ("train/lr", lr), ("train/grad_norm", grad_norm),
                               ("train/images_per_sec", speed), ("train/mfu", mfu), ("train/data_time", data_time)):
                if not math.isnan(value):  # the grad norm of a graph with accumulation, an MFU without a known peak
                    self.tb.add_scalar(tag, value, progress.updates)

    def end_epoch(self):
        self.bar.close()

    def nonfinite_skip(self, where, values, progress, patience):
        self.log.info(f"{where}: non-finite loss or gradient norm ({values}): skipped: no optimizer step, no EMA "
                      f"update ({progress.nonfinite_streak} in a row of train.nonfinite_patience {patience}; "
                      f"{progress.nonfinite_skips} skipped in all)")
        if self.tb:
            self.tb.add_scalar("train/nonfinite_skips", progress.nonfinite_skips, progress.updates)

    def corrupt_images(self, epoch, skipped):
        """Rank 0: the corrupt images skipped so far on all ranks (each rank's log names its files)."""
        if not self.ctx.is_main:
            return
        if skipped:
            self.log.warning(f"epoch {epoch}: {skipped} corrupt image(s) skipped so far on all "
                             f"{self.ctx.data_parallel} data-parallel rank(s); each rank's log_rank<r>.txt names its "
                             f"files")
        if self.tb:
            self.tb.add_scalar("data/corrupt_images_skipped", skipped, epoch)

    # ----------------------------------------------------------------- epochs
    def evaluation(self, epoch, row, count):
        """The epoch's validation line (model, and EMA when ``row`` has it) and scalars; ``count``: images."""
        msg = f"epoch {epoch} val: loss {row['eval_loss']:.4f} top-1 {row['eval_top1']:.2f}% top-5 {row['eval_top5']:.2f}%"
        if "ema_eval_top1" in row:
            msg += f" | EMA top-1 {row['ema_eval_top1']:.2f}% top-5 {row['ema_eval_top5']:.2f}%"
        self.log.info(msg + f" ({count} images)")
        if self.tb:
            for key in EVAL_KEYS:
                if key in row:
                    tag = ("val_ema/" if key.startswith("ema") else "val/") + key.split("_")[-1]
                    self.tb.add_scalar(tag, row[key], epoch)
            self.tb.flush()

    def epoch_row(self, row):
        if self.csv:
            self.csv.append(row)

    def close(self):
        if self.tb:
            self.tb.close()


class _NoProgress:
    def update(self, n):
        pass

    def set_postfix(self, **kw):
        pass

    def close(self):
        pass


def _progress(total, initial, desc, enabled):
    if not enabled:
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False)
