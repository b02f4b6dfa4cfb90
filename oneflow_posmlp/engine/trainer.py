"""The training loop: the official PosMLP ImageNet recipe (AdamW, cosine with warm-up, Mixup/CutMix,
label smoothing, gradient clipping, EMA), exact resume, TensorBoard and CSV logs;
eager or ``nn.Graph`` execution through one step object (``engine/step.py``).

Loop control at every update boundary (``engine/stop.py``, docs/cluster.md): a stop signal on any rank or the
``train.max_minutes`` budget saves ``last`` and raises :class:`~oneflow_posmlp.engine.stop.TrainingStopped`
(exit 75); a non-finite loss or gradient norm on any rank skips the update (``train.nonfinite: skip``) or raises
:class:`~oneflow_posmlp.engine.stop.NonFiniteHalt` without writing anything; no checkpoint is written with
non-finite values, nor from a model whose validation loss is not finite.

One process or many (``python -m oneflow.distributed.launch``): see :class:`~oneflow_posmlp.parallel.ParallelContext`.
"""
import math
import os
import random
import sys
import time

import numpy as np
import oneflow as flow

from .. import slurm
from ..checkpoint import CheckpointError
from ..checkpoint.atomic import recover
from ..checkpoint.load import load_pretrained
from ..checkpoint.weights import load_weights
from ..config import dump_config
from ..data import build_datasets, build_mixup, build_train_criterion, build_train_loader, build_val_loader
from ..models import build_model
from ..models.drop import drop_path_modules
from ..parallel import ParallelContext
from .evaluate import evaluate
from .guidance import warn_if_large_micro_batch
from .logger import CsvLog, TensorBoardWriter, setup_logging
from .mfu import TrainMfu
from .optim import build_ema
from .randomness import numpy_seeded
from .state import load_training_state, rng_preserved, rng_state, save_training_state, set_rng_state
from .step import build_training, check_graph_options, micro_batch_keep
from .stop import NonFiniteHalt, StopControl, StopSignals, TimeBudget, TrainingStopped, any_rank, resolve_signals


class Trainer:
    """Build everything from a validated config; ``fit()`` trains, ``evaluate()`` evaluates (through
    :func:`~oneflow_posmlp.engine.evaluate.evaluate`, which also stands alone: ``tools/eval.py``).

    ``resume``: a training checkpoint directory (``OUTPUT/last``) or ``"auto"`` (``OUTPUT/last`` if present).
    ``init``: converted weights to start from (``tools/convert_torch_weights.py`` output), head may differ.
    ``start_time``: when the command started (``time.time()``), from which ``train.max_minutes`` counts
    (default: now).
    """

    def __init__(self, cfg, output_dir=None, resume=None, init=None, start_time=None):
        self.cfg = cfg
        t = cfg["train"]
        start_time = time.time() if start_time is None else start_time
        signals = StopSignals(resolve_signals(t["stop_signals"]))  # installed by fit()
        self.ctx = ParallelContext(cfg["dist"])
        check_graph_options(t, cfg["dist"])  # before any data is read
        self.out = output_dir or cfg["output"]["dir"]
        # checkpoints are read (safely, see checkpoint.oneflow_reader) before anything is written
        resume_path, recovered = self._resume_path(resume)
        state = load_training_state(resume_path, cfg) if resume_path else None
        ignored_init, init = (init, None) if init and state else (None, init)  # the resumed weights win
        init_weights = load_weights(init) if init else None  # (arrays, metadata)
        self.log = setup_logging(self.out, self.ctx.rank)
        if recovered:
            self.log.warning(recovered)
        if ignored_init:
            self.log.warning(f"--init {ignored_init} is not used: --resume continues from {resume_path} (its weights, "
                             f"optimizer and counters); --init applies only to a run that starts fresh (a new "
                             f"--output, or --resume auto before the first `last` is written)")
        self._seed(t["seed"])

        self.train_set, self.val_set = build_datasets(cfg)
        self.train_loader, self.sampler = build_train_loader(cfg, self.train_set, self.ctx.data_rank,
                                                              self.ctx.data_parallel)
        self.val_loader = build_val_loader(cfg, self.val_set, self.ctx.data_rank, self.ctx.data_parallel)
        self.mixup = build_mixup(cfg)
        self.criterion = build_train_criterion(cfg, self.mixup)

        self.model = build_model(cfg["model"])
        if init:
            self._load_init(init_weights, init)
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
        self.nonfinite_skips = self.nonfinite_streak = 0  # skipped updates: in all, and in a row now
        self.last_good = None  # (path, epoch, update, validated) of the newest `last` with finite values
        self.best_good = None  # (path, epoch, update or None) of `best` (its validation loss was finite)
        if state:
            self._restore(state, resume_path)
        params = sum(p.numel() for p in self.model.parameters())
        state_bytes = 4 * params * (3 + (self.ema is not None))  # weights, 2 moments, EMA (float32)
        self.stop = StopControl(signals, TimeBudget(t["max_minutes"], start_time, state_bytes), self.ctx)
        self.tb = TensorBoardWriter(os.path.join(self.out, "tb")) if cfg["log"]["tensorboard"] and self.ctx.is_main \
            else None
        self.csv = CsvLog(os.path.join(self.out, "summary.csv"), self.epoch) if cfg["log"]["csv"] and self.ctx.is_main \
            else None
        launched = (f" (ranks from SLURM, rank 0 at {os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')})"
                    if os.environ.get(slurm.MARK) else "")
        self.log.info(f"model {cfg['model'].get('name') or 'custom'}: {params:,} parameters; {len(self.train_set)} "
                      f"train / {len(self.val_set)} val images; global batch {t['batch_size']} on "
                      f"{self.ctx.describe()}{launched}; lr {self.lr:.3g}; {self.updates_per_epoch} updates/epoch")
        warn_if_large_micro_batch(cfg, self.ctx, self.log.warning)  # engine/guidance.py: micro-batch vs memory
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
        """``(path or None, note)``: the checkpoint to resume from, after :func:`recover` has put back one that a
        kill during its save left aside (``note`` says so, for the log)."""
        if not resume:
            return None, None
        path = os.path.join(self.out, "last") if resume == "auto" else resume
        recovered = recover(path)
        if resume == "auto" and not os.path.isdir(path):
            return None, recovered
        return path, recovered

    def _load_init(self, weights, path):
        # weights of other windows (another resolution) are carried over, each kind of change logged
        dropped, _, _ = load_pretrained(self.model, weights, allow_head_mismatch=True, log=self.log.info,
                                        source=f"--init {path}")
        self.log.info(f"initialised from {path}" + (f" (kept a fresh classifier: {', '.join(dropped)})" if dropped else ""))

    def _restore(self, state, path):
        self.step.load_state_dict(state)  # optimizer moments and step, loss scaler
        self.epoch, self.batch_in_epoch, self.updates = state["epoch"], state["batch_in_epoch"], state["updates"]
        self._check_data_order(state, path)
        self.loss_sum, self.loss_count = state["loss_sum"], state["loss_count"]
        self.best_top1, self.best_epoch = state["best_top1"], state["best_epoch"]
        self.nonfinite_skips = state.get("nonfinite_skips", 0)  # (absent from checkpoints of earlier versions)
        self.nonfinite_streak = state.get("nonfinite_streak", 0)
        self.last_good = (path, self.epoch, self.updates, not self.batch_in_epoch)
        best = os.path.join(self.out, "best")
        if self.best_epoch >= 0 and os.path.isdir(best):
            self.best_good = (best, self.best_epoch + 1, None)
        self._restore_rank_buffers(state.get("rank_buffers"))
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
            "nonfinite_skips": self.nonfinite_skips, "nonfinite_streak": self.nonfinite_streak,
            "rank_buffers": self._rank_buffers(),
            "config": self.cfg, "train_images": len(self.train_set),
            "classes": list(getattr(self.train_set, "classes", None) or []) or None,  # ImageFolder class names
        }

    def _buffer_modules(self):
        return [("model", self.model)] + ([("ema", self.ema.module)] if self.ema is not None else [])

    def _rank_buffers(self):
        """Mid-epoch under data parallelism every rank's BatchNorm statistics (and their EMA) are its own until the
        epoch's average (``ParallelContext.average_buffers``); the model state holds rank 0's. This holds them
        all: ``{"data_parallel": dp, "buffers": {"model.<name>": (dp, ...) tensor, ...}}`` (None otherwise), so a
        mid-epoch resume on as many data-parallel ranks continues exactly. A collective."""
        if not (self.ctx.data_parallel > 1 and self.batch_in_epoch):
            return None
        rows = self.ctx.sbp(flow.sbp.split(0), flow.sbp.broadcast)
        buffers = {f"{prefix}.{name}": buf.to_local().unsqueeze(0).to_global(placement=buf.placement, sbp=rows)
                   for prefix, module in self._buffer_modules() for name, buf in module.named_buffers()
                   if buf.dtype.is_floating_point}
        return {"data_parallel": self.ctx.data_parallel, "buffers": buffers}

    def _restore_rank_buffers(self, saved):
        """Give every rank its own statistics of a mid-epoch checkpoint (:meth:`_rank_buffers`); with another
        data-parallel degree, their mean."""
        if not saved:
            return
        own = saved["data_parallel"] == self.ctx.data_parallel
        for prefix, module in self._buffer_modules():
            for name, buf in module.named_buffers():
                rows = saved["buffers"].get(f"{prefix}.{name}")
                local = buf.to_local() if buf.is_global else buf
                if rows is None or not local.numel():
                    continue
                value = rows[self.ctx.data_rank] if own else rows.to(flow.float64).mean(0).to(rows.dtype)
                local.copy_(value.to(local.device))

    def save(self, name, validated=False):
        """Write the training checkpoint ``OUTPUT/name`` (atomically), unless it holds a non-finite value: then
        nothing is written and :class:`NonFiniteHalt` is raised (on every rank). ``validated``: its validation
        loss is known to be finite (a ``last`` at the end of an evaluated epoch). Returns the seconds taken."""
        start = time.time()
        path = os.path.join(self.out, name)
        state = self.state()
        bad = self._nonfinite_parts(state)
        if bad:
            raise NonFiniteHalt(f"non-finite values in {', '.join(bad)} at epoch {self.epoch} update {self.updates}: "
                                f"{path} was not written; {self._last_good_text()}; {self._nonfinite_fix()}")
        save_training_state(path, state, self.ctx)
        if name == "last":
            self.last_good = (path, self.epoch, self.updates, validated)
        elif name == "best":
            self.best_good = (path, self.epoch, self.updates)
        seconds = time.time() - start
        self.stop.budget.record("save", seconds)
        return seconds

    def _nonfinite_parts(self, state):
        """The parts of ``state`` (``model``, ``ema``, ``optimizer``) holding a NaN or an infinity on any rank: each
        rank checks its own (local) values, then one collective."""
        parts = ("model", "ema", "optimizer")
        flags = []
        for part in parts:
            tensors = [t.to_local() if t.is_global else t for t in _tensors(state.get(part))]
            tensors = [t for t in tensors if t.dtype.is_floating_point and t.numel()]
            flags.append(0.0 if not tensors else float(not bool(flow.stack([flow.isfinite(t).all() for t in tensors])
                                                                  .all().numpy())))
        return [part for part, bad in zip(parts, any_rank(flags, self.ctx)) if bad]

    def _last_good_text(self, validated=False):
        """Names the newest checkpoint with finite values (``validated``: also a finite validation loss; a `last`
        written mid-epoch since has replaced the last validated one, so then it is `best`)."""
        good = self.last_good if self.last_good and (self.last_good[3] or not validated) else self.best_good
        if good:
            path, epoch, update = good[:3]
            return f"the last good checkpoint is {path} (epoch {epoch}" + \
                (f", update {update})" if update is not None else ")")
        return "no checkpoint was written by this run (and it did not resume from one)"

    def _nonfinite_fix(self, skip_helps=True):
        """What to change, only what differs from the current settings."""
        t = self.cfg["train"]
        fixes = [f"lower train.lr (now {t['lr']:g})"]
        if t["clip_grad"] <= 0:
            fixes.append("set train.clip_grad > 0 (e.g. 5.0)")
        if t["warmup_epochs"] <= 0:
            fixes.append("set train.warmup_epochs > 0")
        text = ", ".join(fixes[:-1]) + (" or " if len(fixes) > 1 else "") + fixes[-1]
        if skip_helps and t["nonfinite"] != "skip":
            text += "; to step over isolated bad batches set train.nonfinite=skip"
        return text

    def _check_val_finite(self, row):
        """Halt (:class:`NonFiniteHalt`) when the epoch's validation loss (or the EMA's) is not finite: its model
        outputs NaN or infinity, so neither `last` nor `best` is written from it. The same on every rank (the
        evaluation is reduced over the ranks)."""
        bad = [f"{name} {row[key]:.4g}" for key, name in (("eval_loss", "validation loss"),
                                                         ("ema_eval_loss", "EMA validation loss"))
               if key in row and not math.isfinite(row[key])]
        if bad:
            raise NonFiniteHalt(f"{' and '.join(bad)} after epoch {self.epoch} update {self.updates}: last and best "
                                f"not written; {self._last_good_text(validated=True)}; "
                                f"{self._nonfinite_fix(skip_helps=False)}")

    # ----------------------------------------------------------------- training
    def fit(self):
        """Train to ``train.epochs``; returns the best top-1. Raises :class:`TrainingStopped` (``last`` written:
        resume it) or :class:`NonFiniteHalt` (nothing written) when the run ends early (``engine/stop.py``)."""
        try:
            with self.stop.signals:  # the handlers only note a signal; the loop decides at update boundaries
                return self._fit()
        finally:
            if self.tb:
                self.tb.close()

    def _fit(self):
        epochs = self.cfg["train"]["epochs"]
        start = time.time()
        while self.epoch < epochs:
            train_loss = self.train_one_epoch()
            eval_start = time.time()
            if self.ctx.data_parallel > 1:  # timm's dist_bn "reduce": one set of BatchNorm statistics for all ranks
                sums = [self.ctx.average_buffers(m) for m in (self.model, self.ema and self.ema.module) if m]
                self.log.info(f"epoch {self.epoch}: buffers averaged over {self.ctx.data_parallel} ranks "
                              f"(checksum {sum(sums):.6f})")
            if self.ctx.distributed:  # every rank must hold the same replicated weights
                self.log.info(f"epoch {self.epoch}: replicas agree within {self.ctx.replica_divergence(self.model):.3g}")
            row = {"epoch": self.epoch, "train_loss": train_loss}
            if self._eval_due():
                row.update(self._evaluate_and_log())
                self.stop.budget.record("eval", time.time() - eval_start)  # with the epoch's other end work
            self._check_val_finite(row)  # a model whose validation loss is NaN is no checkpoint: halt first
            self.epoch += 1
            self.batch_in_epoch, self.loss_sum, self.loss_count = 0, 0.0, 0.0
            if self.csv:
                self.csv.append(row)
            # `best` first, then `last`, both carrying the updated best: a resume from `last` knows this best, and
            # a kill between the two leaves the previous `last`, whose rerun of the epoch writes `best` again
            if row.get("eval_top1", -1) > self.best_top1:
                self.best_top1, self.best_epoch = row["eval_top1"], row["epoch"]
                self.save("best")
            self.save("last", validated="eval_loss" in row)
            if self.epoch < epochs:  # a boundary too: `last` is this very state, so a stop here writes nothing
                decision = self.stop.decide(next_seconds=self.stop.budget.update_seconds())
                if decision.stop:
                    self._stopped(decision, saved=None)
        self.log.info(f"done: {epochs} epochs in {time.time() - start:.0f} s; best top-1 {self.best_top1:.2f}% "
                      f"(epoch {self.best_epoch})")
        return self.best_top1

    def _eval_due(self):
        t = self.cfg["train"]
        return (self.epoch + 1) % t["eval_interval"] == 0 or self.epoch + 1 == t["epochs"]

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
        data_start = self._boundary_time = time.time()
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
                    x, y = self.mixup(x, y)  # on the device batch, local tensors: before to_global
            keep = self._drop_path_keep(len(x), step)
            self.batch_in_epoch += 1
            window_images += local_batch * ctx.data_parallel
            progress.update(1)
            # the boundary's agreement is made inside the step, read with its loss and gradient norm (one host read)
            result = self.step.run(x, y, keep, step, lambda values: self._agree(values, total))  # (5th: agree)
            if result is not None:  # an update boundary: the optimizer has stepped (or skipped a non-finite one)
                decision = self._decide(result, epoch_end=self.batch_in_epoch == total)
                saved = None
                if decision.nonfinite:
                    self._nonfinite(result)  # halts (raises), or counts the skipped update
                else:
                    self.nonfinite_streak = 0
                    self.loss_sum += result.loss_sum
                    self.loss_count += result.micro_batches
                    lr = self._lr()  # the rate this update ran at (_after_update moves to the next one's)
                    self._after_update()
                    if self.updates % t["log_interval"] == 0 or self.batch_in_epoch == total:
                        speed = window_images / max(time.time() - window_start, 1e-9)
                        self._log_step(result.loss, lr, result.grad_norm, speed, data_time)
                        progress.set_postfix(loss=f"{result.loss:.3f}", lr=f"{lr:.2e}")
                        window_start, window_images = time.time(), 0
                    every = self.cfg["output"]["save_every_steps"]
                    if every > 0 and self.updates % every == 0:
                        saved = self.save("last")
                if decision.stop:
                    progress.close()
                    self._stopped(decision, saved)
                self._boundary_time = time.time()
            data_start = time.time()
        self.step.discard()  # micro-batches of an unfinished update do not carry into the next epoch
        progress.close()
        return self.loss_sum / max(self.loss_count, 1)

    def _agree(self, values, total):
        """The step's ``agree`` (``engine/step.py``): the boundary's agreement of all ranks with the update's device
        ``values`` read in its one collective; kept for :meth:`_decide`, the values read returned to the step."""
        self._agreed = self._agreement(epoch_end=self.batch_in_epoch == total, values=values)
        return self._agreed.values

    def _decide(self, result, epoch_end):
        """The agreement of all ranks at an update boundary (one collective, ``engine/stop.py``): the one the step
        made with its values (:meth:`_agree`), with the update's finiteness (the same on every rank: the values
        were read from one rank), or one made now."""
        agreed, self._agreed = getattr(self, "_agreed", None), None
        if agreed is not None:
            return agreed._replace(nonfinite=agreed.nonfinite or not result.finite)
        return self._agreement(epoch_end, nonfinite=not result.finite)

    def _agreement(self, epoch_end, nonfinite=False, values=None):
        """One collective: the stop signals, the time budget, ``nonfinite``, and ``values`` read. The budget asks
        whether the next piece of work fits with a checkpoint after it: the next update, or at the end of the
        epoch its evaluation and checkpoints."""
        budget = self.stop.budget
        budget.record("update", time.time() - self._boundary_time)
        if epoch_end:
            evals = (2 if self.ema is not None else 1) * len(self.val_loader) if self._eval_due() else 0
            next_seconds, saves = budget.eval_estimate(evals), 2 if evals else 1
        else:
            next_seconds, saves = budget.update_seconds(), 1
        # at the epoch's end the corrupt images each rank skipped ride along (summed), for rank 0's report
        counts = [getattr(self.train_set, "skipped", 0)] if epoch_end else []
        decision = self.stop.decide(nonfinite=nonfinite, next_seconds=next_seconds, saves_after=saves, values=values,
                                    counts=counts)
        if epoch_end:
            self._report_skipped(decision.counts[0])
        return decision

    def _report_skipped(self, skipped):
        """Rank 0: the corrupt images skipped so far on all ranks (each rank's log names its files)."""
        if not self.ctx.is_main:
            return
        if skipped:
            self.log.warning(f"epoch {self.epoch}: {skipped} corrupt image(s) skipped so far on all "
                             f"{self.ctx.data_parallel} data-parallel rank(s); each rank's log_rank<r>.txt names its "
                             f"files")
        if self.tb:
            self.tb.add_scalar("data/corrupt_images_skipped", skipped, self.epoch)

    def _nonfinite(self, result):
        """A non-finite loss or gradient norm on some rank at this update (the step did not apply it): count the
        skip (``train.nonfinite: skip``, up to ``train.nonfinite_patience`` in a row) or halt."""
        t = self.cfg["train"]
        values = f"loss {result.loss:.4g}, grad_norm {result.grad_norm:.4g}"
        where = f"epoch {self.epoch} update {self.updates + 1}"
        if t["nonfinite"] == "skip":
            self.nonfinite_skips += 1
            self.nonfinite_streak += 1
            self.log.info(f"{where}: non-finite loss or gradient norm ({values}): skipped: no optimizer step, no EMA "
                          f"update ({self.nonfinite_streak} in a row of train.nonfinite_patience "
                          f"{t['nonfinite_patience']}; {self.nonfinite_skips} skipped in all)")
            if self.tb:
                self.tb.add_scalar("train/nonfinite_skips", self.nonfinite_skips, self.updates)
            if self.nonfinite_streak < t["nonfinite_patience"]:
                return
            what = f"{self.nonfinite_streak} non-finite updates in a row (train.nonfinite_patience), the last"
        else:
            what = "non-finite loss or gradient norm"
        raise NonFiniteHalt(f"{what} at {where} ({values}): stopped without writing a checkpoint; "
                            f"{self._last_good_text()}; {self._nonfinite_fix(skip_helps=t['nonfinite'] != 'skip')}")

    def _stopped(self, decision, saved):
        """Save ``last`` at this update (unless ``saved``: its seconds, already written here; None with no
        seconds: the epoch-end ``last`` is this state), log one line and raise :class:`TrainingStopped`."""
        path = os.path.join(self.out, "last")
        if saved is None and self.batch_in_epoch:
            saved = self.save("last")
        how = f"saved {path} in {saved:.1f} s" if saved is not None else f"{path} (written at the end of the epoch)"
        left = self.stop.budget.left()
        budget = ("" if not math.isfinite(left) else f"; {left:.1f} s of train.max_minutes left" if left >= 0
                  else f"; {-left:.1f} s past train.max_minutes")
        msg = (f"stopped ({decision.stop}) at epoch {self.epoch} update {self.updates} (batch {self.batch_in_epoch}): "
               f"{how}{budget}; exit 75: continue with --resume auto")
        self.log.info(msg)
        raise TrainingStopped(msg)

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

    def _log_step(self, loss, lr, grad_norm, speed, data_time):
        """One line (and TensorBoard scalars) for the update just applied; ``lr``: the rate it ran at."""
        mfu = self.mfu.of(speed)  # engine/mfu.py; NaN where the device's peak is unknown
        mfu = float("nan") if mfu is None else mfu
        self.log.info(f"epoch {self.epoch} update {self.updates}: loss {loss:.4f} lr {lr:.3e} "
                      f"grad_norm {grad_norm:.3f} {speed:.1f} img/s MFU {mfu:.3f} data {data_time * 1000:.0f} ms")
        if self.tb:
            for tag, value in (("train/loss", loss), ("train/lr", lr), ("train/grad_norm", grad_norm),
                               ("train/images_per_sec", speed), ("train/mfu", mfu), ("train/data_time", data_time)):
                if not math.isnan(value):  # the grad norm of a graph with accumulation, an MFU without a known peak
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


def _tensors(obj):
    """The tensors in a (nested) state dict."""
    if isinstance(obj, flow.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


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
