"""The training loop: the official PosMLP ImageNet recipe (AdamW, cosine with warm-up, Mixup/CutMix,
label smoothing, gradient clipping, EMA), exact resume, TensorBoard and CSV logs;
eager or ``nn.Graph`` execution through one step object (``engine/step.py``).

One process or many (``python -m oneflow.distributed.launch``): see :class:`~oneflow_posmlp.parallel.ParallelContext`.
"""
import math
import os
import random
import sys
import time

import numpy as np
import oneflow as flow

from ..checkpoint import CheckpointError
from ..checkpoint.convert import load_into_model
from ..checkpoint.weights import load_weights
from ..config import dump_config
from ..data import build_datasets, build_mixup, build_train_criterion, build_train_loader, build_val_loader
from ..models import build_model
from ..models.drop import drop_path_modules
from ..parallel import ParallelContext
from .evaluate import evaluate
from .logger import CsvLog, TensorBoardWriter, setup_logging
from .mfu import TrainMfu
from .optim import build_ema
from .randomness import numpy_seeded
from .state import load_training_state, rng_preserved, rng_state, save_training_state, set_rng_state
from .step import build_training, check_graph_options, micro_batch_keep


class Trainer:
    """Build everything from a validated config; ``fit()`` trains, ``evaluate()`` evaluates (through
    :func:`~oneflow_posmlp.engine.evaluate.evaluate`, which also stands alone: ``tools/eval.py``).

    ``resume``: a training checkpoint directory (``OUTPUT/last``) or ``"auto"`` (``OUTPUT/last`` if present).
    ``init``: converted weights to start from (``tools/convert_torch_weights.py`` output), head may differ.
    """

    def __init__(self, cfg, output_dir=None, resume=None, init=None):
        self.cfg = cfg
        t = cfg["train"]
        self.ctx = ParallelContext(cfg["dist"])
        check_graph_options(t, cfg["dist"])  # before any data is read
        self.out = output_dir or cfg["output"]["dir"]
        # checkpoints are read (safely, see checkpoint.oneflow_reader) before anything is written
        init_arrays = load_weights(init)[0] if init else None
        resume_path = self._resume_path(resume)
        state = load_training_state(resume_path, cfg) if resume_path else None
        self.log = setup_logging(self.out, self.ctx.rank)
        self._seed(t["seed"])

        self.train_set, self.val_set = build_datasets(cfg)
        self.train_loader, self.sampler = build_train_loader(cfg, self.train_set, self.ctx.data_rank,
                                                              self.ctx.data_parallel)
        self.val_loader = build_val_loader(cfg, self.val_set, self.ctx.data_rank, self.ctx.data_parallel)
        self.mixup = build_mixup(cfg)
        self.criterion = build_train_criterion(cfg, self.mixup)

        self.model = build_model(cfg["model"])
        if init:
            self._load_init(init_arrays, init)
        if state:
            self.model.load_state_dict(state["model"])
        self.mfu = TrainMfu(self.model, self.ctx, amp=t["amp"] and self.ctx.device == "cuda")  # on the local model
        self.ema = build_ema(self.model, t)
        if state and self.ema is not None and state.get("ema") is not None:
            self.ema.module.load_state_dict(state["ema"])
        self.ctx.apply(self.model)
        self.drop_paths = drop_path_modules(self.model)  # their keep masks are drawn per micro-batch here
        if self.ema is not None:
            self.ctx.apply(self.ema.module)

        self.accum = t["grad_accum_steps"]
        self.updates_per_epoch = max(self._batches_per_epoch() // self.accum, 1)
        # optimizer, lr schedule and the step object (eager or nn.Graph: the one place the execution mode
        # matters, engine/step.py), built as the benchmark builds them
        training = build_training(cfg, self.model, self.criterion, self.ctx, self.updates_per_epoch)
        self.step, self.optimizer, self.scheduler = training.step, training.optimizer, training.scheduler
        self.lr, self.amp, self.clip_scope = training.lr, training.amp, training.clip_scope
        if t["amp"] and not self.amp:
            self.log.warning("train.amp: true is ignored: AMP (autocast, loss scaling) is CUDA-only and this run is on "
                             f"{self.ctx.device}; training runs in float32")

        self.epoch = self.batch_in_epoch = self.updates = 0
        self.loss_sum = self.loss_count = 0.0
        self.best_top1, self.best_epoch = -1.0, -1
        if state:
            self._restore(state, resume_path)
        self.tb = TensorBoardWriter(os.path.join(self.out, "tb")) if cfg["log"]["tensorboard"] and self.ctx.is_main \
            else None
        self.csv = CsvLog(os.path.join(self.out, "summary.csv"), self.epoch) if cfg["log"]["csv"] and self.ctx.is_main \
            else None
        params = sum(p.numel() for p in self.model.parameters())
        self.log.info(f"model {cfg['model'].get('name') or 'custom'}: {params:,} parameters; {len(self.train_set)} "
                      f"train / {len(self.val_set)} val images; global batch {t['batch_size']} on "
                      f"{self.ctx.describe()}; lr {self.lr:.3g}; {self.updates_per_epoch} updates/epoch")
        if self.tb:
            self.tb.add_text("config", "```\n" + dump_config(cfg) + "\n```", 0)

    # ----------------------------------------------------------------- setup helpers
    def _seed(self, seed):
        random.seed(seed)
        np.random.seed(seed)
        flow.manual_seed(seed)

    def _batches_per_epoch(self):
        n = self.sampler.num_batches()
        limit = self.cfg["data"]["limit_train_batches"]
        return min(n, limit) if limit > 0 else n

    def _resume_path(self, resume):
        if resume == "auto":
            last = os.path.join(self.out, "last")
            return last if os.path.isdir(last) else None
        return resume

    def _load_init(self, arrays, path):
        dropped = load_into_model(self.model, arrays, allow_head_mismatch=True)
        self.log.info(f"initialised from {path}" + (f" (kept a fresh classifier: {', '.join(dropped)})" if dropped else ""))

    def _restore(self, state, path):
        self.step.load_state_dict(state)  # optimizer moments and step, loss scaler
        self.epoch, self.batch_in_epoch, self.updates = state["epoch"], state["batch_in_epoch"], state["updates"]
        self._check_data_order(state, path)
        self.loss_sum, self.loss_count = state["loss_sum"], state["loss_count"]
        self.best_top1, self.best_epoch = state["best_top1"], state["best_epoch"]
        # the schedule is rebuilt from the config and moved to the saved update (it is a function of the update
        # number): an unchanged config continues exactly, a longer train.epochs extends the cosine
        self.scheduler.step_update(self.updates)
        set_rng_state(state["rng"][self.ctx.rank] if isinstance(state["rng"], list) else state["rng"])
        self.log.info(f"resumed from {path}: epoch {self.epoch}, batch {self.batch_in_epoch}, update {self.updates}")

    def _check_data_order(self, state, path):
        """A mid-epoch resume skips the global batches already trained on: that needs the same data set and
        global batch (the data-parallel degree may change: rank r reads block r of every global batch)."""
        if not self.batch_in_epoch:
            return
        saved = {"train images": state.get("train_images"),
                 "train.batch_size": (state.get("config") or {}).get("train", {}).get("batch_size")}
        now = {"train images": len(self.train_set), "train.batch_size": self.cfg["train"]["batch_size"]}
        diff = [k for k in saved if saved[k] is not None and saved[k] != now[k]]
        if diff:
            raise CheckpointError(f"--resume {path}: cannot continue mid-epoch ({self.batch_in_epoch} batches into epoch "
                                  f"{self.epoch}): {diff[0]} was {saved[diff[0]]}, now {now[diff[0]]}, so the rest of "
                                  f"the epoch's order would differ; resume with the same data and global batch, or "
                                  f"from a checkpoint written at the end of an epoch")

    # ----------------------------------------------------------------- checkpoints
    def state(self):
        """The training checkpoint. The lr schedule and the data order are functions of the config and the
        counters (``updates``, ``epoch``, ``batch_in_epoch``): rebuilt on resume, not stored."""
        return {
            "model": self.model.state_dict(), "ema": self.ema.module.state_dict() if self.ema else None,
            **self.step.state_dict(),  # optimizer, scaler
            "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "updates": self.updates, "loss_sum": self.loss_sum, "loss_count": self.loss_count,
            "best_top1": self.best_top1, "best_epoch": self.best_epoch, "rng": rng_state(),
            "config": self.cfg, "train_images": len(self.train_set),
            "classes": list(getattr(self.train_set, "classes", None) or []) or None,  # ImageFolder class names
        }

    def save(self, name):
        save_training_state(os.path.join(self.out, name), self.state(), self.ctx)

    # ----------------------------------------------------------------- training
    def fit(self):
        epochs = self.cfg["train"]["epochs"]
        start = time.time()
        while self.epoch < epochs:
            train_loss = self.train_one_epoch()
            if self.ctx.data_parallel > 1:  # timm's dist_bn "reduce": one set of BatchNorm statistics for all ranks
                sums = [self.ctx.average_buffers(m) for m in (self.model, self.ema and self.ema.module) if m]
                self.log.info(f"epoch {self.epoch}: buffers averaged over {self.ctx.data_parallel} ranks "
                              f"(checksum {sum(sums):.6f})")
            if self.ctx.distributed:  # every rank must hold the same replicated weights
                self.log.info(f"epoch {self.epoch}: replicas agree within {self.ctx.replica_divergence(self.model):.3g}")
            row = {"epoch": self.epoch, "train_loss": train_loss}
            if (self.epoch + 1) % self.cfg["train"]["eval_interval"] == 0 or self.epoch + 1 == epochs:
                row.update(self._evaluate_and_log())
            self.epoch += 1
            self.batch_in_epoch, self.loss_sum, self.loss_count = 0, 0.0, 0.0
            if self.csv:
                self.csv.append(row)
            self.save("last")
            if row.get("eval_top1", -1) > self.best_top1:
                self.best_top1, self.best_epoch = row["eval_top1"], row["epoch"]
                self.save("best")
        self.log.info(f"done: {epochs} epochs in {time.time() - start:.0f} s; best top-1 {self.best_top1:.2f}% "
                      f"(epoch {self.best_epoch})")
        if self.tb:
            self.tb.close()
        return self.best_top1

    def train_one_epoch(self):
        t, ctx = self.cfg["train"], self.ctx
        local_batch = self.train_loader.batch_size
        self.sampler.set_epoch(self.epoch, consumed=self.batch_in_epoch * local_batch)
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(self.epoch)
        total = self._batches_per_epoch()
        self.model.train()
        with rng_preserved():
            batches = iter(self.train_loader)
        # a bar only on a terminal: in a log file (CI, > file) each refresh would be a line; log lines always
        progress = _progress(total, self.batch_in_epoch, f"epoch {self.epoch}",
                             ctx.is_main and self.cfg["log"]["progress"] and sys.stderr.isatty())
        data_start = time.time()
        window_start, window_images = time.time(), 0
        while self.batch_in_epoch < total:
            try:
                x, y = next(batches)
            except StopIteration:
                break
            data_time = time.time() - data_start
            step = (t["seed"], self.updates, self.batch_in_epoch % self.accum)  # seeds every draw of the micro-batch
            if self.mixup is not None:
                with numpy_seeded(*step, ctx.data_rank):
                    x, y = self.mixup(x, y)  # on local tensors, before to_global
            keep = self._drop_path_keep(len(x), step)
            self.batch_in_epoch += 1
            window_images += local_batch * ctx.data_parallel
            progress.update(1)
            result = self.step.run(x, y, keep, step)
            if result is not None:  # the update is complete: the optimizer has stepped
                self.loss_sum += result.loss_sum
                self.loss_count += result.micro_batches
                self._after_update()
                if self.updates % t["log_interval"] == 0 or self.batch_in_epoch == total:
                    speed = window_images / max(time.time() - window_start, 1e-9)
                    self._log_step(result.loss, result.grad_norm, speed, data_time)
                    progress.set_postfix(loss=f"{result.loss:.3f}", lr=f"{self._lr():.2e}")
                    window_start, window_images = time.time(), 0
                every = self.cfg["output"]["save_every_steps"]
                if every > 0 and self.updates % every == 0:
                    self.save("last")
            data_start = time.time()
        self.step.discard()  # micro-batches of an unfinished update do not carry into the next epoch
        progress.close()
        return self.loss_sum / max(self.loss_count, 1)

    def _drop_path_keep(self, local_batch, step):
        """This rank's rows of the micro-batch's drop-path keep masks, ``(local_batch, blocks)``, or None."""
        return micro_batch_keep(self.drop_paths, local_batch, self.ctx, step)

    def _after_update(self):
        """After every optimizer step, in both modes: the update count, the lr schedule, the EMA."""
        self.updates += 1
        self.scheduler.step_update(self.updates)
        if self.ema is not None:
            self.ema.update(self.model)

    def _lr(self):
        return self.optimizer.param_groups[0]["lr"]

    def _log_step(self, loss, grad_norm, speed, data_time):
        mfu = self.mfu.of(speed)  # engine/mfu.py; NaN where the device's peak is unknown
        mfu = float("nan") if mfu is None else mfu
        self.log.info(f"epoch {self.epoch} update {self.updates}: loss {loss:.4f} lr {self._lr():.3e} "
                      f"grad_norm {grad_norm:.3f} {speed:.1f} img/s MFU {mfu:.3f} data {data_time * 1000:.0f} ms")
        if self.tb:
            for tag, value in (("train/loss", loss), ("train/lr", self._lr()), ("train/grad_norm", grad_norm),
                               ("train/images_per_sec", speed), ("train/mfu", mfu), ("train/data_time", data_time)):
                if not math.isnan(value):  # the grad norm of a graph step is not known
                    self.tb.add_scalar(tag, value, self.updates)
            if self.step.loss_scale is not None:
                self.tb.add_scalar("train/loss_scale", self.step.loss_scale, self.updates)

    # ----------------------------------------------------------------- evaluation
    def evaluate(self, model=None):
        """``{loss, top1, top5, count}`` of ``model`` (default: the trained model) on the validation set."""
        model = model or self.model
        return evaluate(model, self.val_loader, self.ctx, forward=self.step.eval_forward(model), amp=self.amp)

    def _evaluate_and_log(self):
        row = {}
        res = self.evaluate()
        row.update(eval_loss=res["loss"], eval_top1=res["top1"], eval_top5=res["top5"])
        msg = f"epoch {self.epoch} val: loss {res['loss']:.4f} top-1 {res['top1']:.2f}% top-5 {res['top5']:.2f}%"
        if self.ema is not None:
            ema = self.evaluate(self.ema.module)
            row.update(ema_eval_loss=ema["loss"], ema_eval_top1=ema["top1"], ema_eval_top5=ema["top5"])
            msg += f" | EMA top-1 {ema['top1']:.2f}% top-5 {ema['top5']:.2f}%"
        self.log.info(msg + f" ({res['count']} images)")
        if self.tb:
            for key in ("eval_loss", "eval_top1", "eval_top5", "ema_eval_loss", "ema_eval_top1", "ema_eval_top5"):
                if key in row:
                    tag = ("val_ema/" if key.startswith("ema") else "val/") + key.split("_")[-1]
                    self.tb.add_scalar(tag, row[key], self.epoch)
            self.tb.flush()
        return row


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
