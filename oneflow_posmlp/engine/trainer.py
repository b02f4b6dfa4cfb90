"""The training loop: the official PosMLP ImageNet recipe (AdamW, cosine with warm-up, Mixup/CutMix,
label smoothing, gradient clipping, EMA), exact resume, TensorBoard and CSV logs;
eager or ``nn.Graph`` execution through one step object (``engine/step.py``).

The trainer puts together objects with one concern each, and ``fit()`` calls them in the recipe's order:

* :class:`~oneflow_posmlp.engine.progress.Progress`: the counters, saved and restored in one place;
* :class:`~oneflow_posmlp.engine.update.Updater`: the update routine (Mixup, drop-path masks, the step object,
  then the lr schedule and the EMA), the one the benchmark times;
* :class:`~oneflow_posmlp.engine.boundary.UpdateBoundary`: the agreement of all ranks at every update boundary
  (stop signals, ``train.max_minutes``, finiteness; ``engine/stop.py``): a stop saves ``last`` and raises
  :class:`~oneflow_posmlp.engine.stop.TrainingStopped` (exit 75);
* :class:`~oneflow_posmlp.engine.nonfinite.NonFiniteGuard`: a non-finite update is skipped
  (``train.nonfinite: skip``) or halts (:class:`~oneflow_posmlp.engine.stop.NonFiniteHalt`, nothing written);
* :class:`~oneflow_posmlp.engine.validation.Validation`: the end-of-epoch evaluation of the model and its EMA;
* :class:`~oneflow_posmlp.engine.checkpointer.Checkpointer`: ``best`` and ``last``, never with a non-finite value;
* :class:`~oneflow_posmlp.engine.monitor.Monitor`: log lines, MFU, TensorBoard, ``summary.csv``.

One process or many (``python -m oneflow.distributed.launch``): see :class:`~oneflow_posmlp.parallel.ParallelContext`.
"""
import os
import random
import time

import numpy as np
import oneflow as flow

from .. import slurm
from ..checkpoint.load import load_pretrained
from ..checkpoint.weights import load_weights
from ..data import build_datasets, build_mixup, build_train_criterion, build_train_loader, build_val_loader
from ..models import build_model
from ..models.drop import drop_path_modules
from ..parallel import ParallelContext
from .boundary import UpdateBoundary
from .checkpointer import Checkpointer, rank_buffers, restore_rank_buffers, resume_path
from .evaluate import evaluate
from .guidance import warn_if_large_micro_batch
from .logger import setup_logging
from .mfu import TrainMfu
from .monitor import Monitor
from .nonfinite import NonFiniteGuard
from .optim import build_ema
from .progress import Progress, check_data_order
from .state import load_training_state, rng_preserved, rng_state, set_rng_state
from .step import build_training, check_graph_options
from .stop import StopControl, StopSignals, TimeBudget, TrainingStopped, resolve_signals
from .update import Updater
from .validation import Validation


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
        path, recovered = resume_path(self.out, resume)
        state = load_training_state(path, cfg) if path else None
        ignored_init, init = (init, None) if init and state else (None, init)  # the resumed weights win
        init_weights = load_weights(init) if init else None  # (arrays, metadata)
        self.log = setup_logging(self.out, self.ctx.rank)
        if recovered:
            self.log.warning(recovered)
        if ignored_init:
            self.log.warning(f"--init {ignored_init} is not used: --resume continues from {path} (its weights, "
                             f"optimizer and counters); --init applies only to a run that starts fresh (a new "
                             f"--output, or --resume auto before the first `last` is written)")
        self._seed(t["seed"])
        self._build_data()
        self._build_model(init, init_weights, state)
        self._build_training()
        self.progress = Progress()
        params = sum(p.numel() for p in self.model.parameters())
        state_bytes = 4 * params * (3 + (self.ema is not None))  # weights, 2 moments, EMA (float32)
        self.stop = StopControl(signals, TimeBudget(t["max_minutes"], start_time, state_bytes), self.ctx)
        self.checkpoints = Checkpointer(self.out, self.ctx, t, self.stop.budget)
        if state:
            self._restore(state, path)
        self.validation = Validation(t, self.val_loader, self.ema)
        self.boundary = UpdateBoundary(self.stop, self.validation, self.train_set)
        self.monitor = Monitor(cfg, self.ctx, self.out, self.log, self.mfu, start_epoch=self.progress.epoch)
        self.guard = NonFiniteGuard(t, self.checkpoints, self.monitor)
        self._log_start(params)

    # ----------------------------------------------------------------- setup
    def _seed(self, seed):
        random.seed(seed)
        np.random.seed(seed)
        flow.manual_seed(seed)

    def _build_data(self):
        cfg, ctx = self.cfg, self.ctx
        self.train_set, self.val_set = build_datasets(cfg)
        self.train_loader, self.sampler = build_train_loader(cfg, self.train_set, ctx.data_rank, ctx.data_parallel)
        self.val_loader = build_val_loader(cfg, self.val_set, ctx.data_rank, ctx.data_parallel)
        self.mixup = build_mixup(cfg)
        self.criterion = build_train_criterion(cfg, self.mixup)

    def _build_model(self, init, init_weights, state):
        """The model (from ``--init`` weights, or the resumed checkpoint's), its EMA, both placed by the layout."""
        t = self.cfg["train"]
        self.model = build_model(self.cfg["model"])
        if init:
            # weights of other windows (another resolution) are carried over, each kind of change logged
            dropped, _, _ = load_pretrained(self.model, init_weights, allow_head_mismatch=True, log=self.log.info,
                                            source=f"--init {init}")
            self.log.info(f"initialised from {init}" +
                          (f" (kept a fresh classifier: {', '.join(dropped)})" if dropped else ""))
        if state:
            self.model.load_state_dict(state["model"])
        self.mfu = TrainMfu(self.model, self.ctx, amp=t["amp"] and self.ctx.device == "cuda")  # on the local model
        self.ema = build_ema(self.model, t)
        if state and self.ema is not None and state.get("ema") is not None:
            self.ema.module.load_state_dict(state["ema"])
        self.ctx.apply(self.model)
        if self.ema is not None:
            self.ctx.apply(self.ema.module)

    def _build_training(self):
        """The optimizer, the lr schedule and the step object (eager or nn.Graph: the one place the execution mode
        matters, engine/step.py), built as the benchmark builds them, and the update routine over them."""
        t = self.cfg["train"]
        self.accum = t["grad_accum_steps"]
        self.updates_per_epoch = max(self._batches_per_epoch() // self.accum, 1)
        training = build_training(self.cfg, self.model, self.criterion, self.ctx, self.updates_per_epoch)
        self.step, self.optimizer, self.scheduler = training.step, training.optimizer, training.scheduler
        self.lr, self.amp = training.lr, training.amp
        if t["amp"] and not self.amp:
            self.log.warning("train.amp: true is ignored: AMP (autocast, loss scaling) is CUDA-only and this run is on "
                             f"{self.ctx.device}; training runs in float32")
        self.updater = Updater(self.step, self.scheduler, self.ctx, t["seed"], drop_path_modules(self.model),
                               self.model, mixup=self.mixup, ema=self.ema)

    def _log_start(self, params):
        cfg, t = self.cfg, self.cfg["train"]
        launched = (f" (ranks from SLURM, rank 0 at {os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')})"
                    if os.environ.get(slurm.MARK) else "")
        self.log.info(f"model {cfg['model'].get('name') or 'custom'}: {params:,} parameters; {len(self.train_set)} "
                      f"train / {len(self.val_set)} val images; global batch {t['batch_size']} on "
                      f"{self.ctx.describe()}{launched}; lr {self.lr:.3g}; {self.updates_per_epoch} updates/epoch")
        warn_if_large_micro_batch(cfg, self.ctx, self.log.warning)  # engine/guidance.py: micro-batch vs memory
        self.monitor.config()

    def _batches_per_epoch(self):
        n = self.sampler.num_batches()
        limit = self.cfg["data"]["limit_train_batches"]
        return min(n, limit) if limit > 0 else n

    # ----------------------------------------------------------------- checkpoints
    def state(self):
        """The training checkpoint: weights, EMA, optimizer and loss scaler, the counters (:class:`Progress`), the
        RNGs, each data-parallel rank's buffers mid-epoch, the config. The lr schedule and the data order are
        functions of the config and the counters: rebuilt on resume, not stored."""
        return {
            "model": self.model.state_dict(), "ema": self.ema.module.state_dict() if self.ema else None,
            **self.step.state_dict(),  # optimizer, scaler
            **self.progress.state_dict(),
            "rng": rng_state(),
            "rank_buffers": rank_buffers(self._buffer_modules(), self.ctx, self.progress.mid_epoch),
            "config": self.cfg, "train_images": len(self.train_set),
            "classes": list(getattr(self.train_set, "classes", None) or []) or None,  # ImageFolder class names
        }

    def _restore(self, state, path):
        """Continue from the checkpoint ``state`` (read from ``path``): what :meth:`state` wrote, put back."""
        self.step.load_state_dict(state)  # optimizer moments and step, loss scaler
        p = self.progress
        p.load_state_dict(state)
        check_data_order(state, path, p.batch_in_epoch, p.epoch, len(self.train_set), self.cfg["train"]["batch_size"])
        self.checkpoints.resumed(path, p)
        restore_rank_buffers(self._buffer_modules(), self.ctx, state.get("rank_buffers"))
        # the schedule is rebuilt from the config and moved to the saved update (it is a function of the update
        # number): an unchanged config continues exactly, a longer train.epochs extends the cosine
        self.scheduler.step_update(p.updates)
        set_rng_state(state["rng"][self.ctx.rank] if isinstance(state["rng"], list) else state["rng"])
        self.log.info(f"resumed from {path}: epoch {p.epoch}, batch {p.batch_in_epoch}, update {p.updates}")

    def _buffer_modules(self):
        return [("model", self.model)] + ([("ema", self.ema.module)] if self.ema is not None else [])

    def save(self, name, validated=False):
        """Write the training checkpoint ``OUTPUT/name`` (atomically), unless it holds a non-finite value: then
        nothing is written and :class:`NonFiniteHalt` is raised (on every rank). ``validated``: its validation
        loss is known to be finite (a ``last`` at the end of an evaluated epoch). Returns the seconds taken."""
        return self.checkpoints.save(name, self.state(), self.progress, validated=validated)

    # ----------------------------------------------------------------- training
    def fit(self):
        """Train to ``train.epochs``; returns the best top-1. Raises :class:`TrainingStopped` (``last`` written:
        resume it) or :class:`NonFiniteHalt` (nothing written) when the run ends early (``engine/stop.py``)."""
        try:
            with self.stop.signals:  # the handlers only note a signal; the loop decides at update boundaries
                return self._fit()
        finally:
            self.monitor.close()

    def _fit(self):
        p, epochs = self.progress, self.cfg["train"]["epochs"]
        start = time.time()
        while p.epoch < epochs:
            row = {"epoch": p.epoch, "train_loss": self.train_one_epoch()}
            end_start = time.time()
            self._reconcile_replicas()
            if self.validation.due(p.epoch):
                row.update(self._validate())
                self.stop.budget.record("eval", time.time() - end_start)  # with the epoch's other end work
            self.guard.check_validation(row, p)  # a model whose validation loss is NaN is no checkpoint: halt first
            p.end_epoch()
            self.monitor.epoch_row(row)
            # `best` first, then `last`, both carrying the updated best: a resume from `last` knows this best, and
            # a kill between the two leaves the previous `last`, whose rerun of the epoch writes `best` again
            if p.record_best(row):
                self.save("best")
            self.save("last", validated="eval_loss" in row)
            if p.epoch < epochs:  # a boundary too: `last` is this very state, so a stop here writes nothing
                decision = self.boundary.between_epochs()
                if decision.stop:
                    self._stopped(decision, saved=None)
        self.log.info(f"done: {epochs} epochs in {time.time() - start:.0f} s; best top-1 {p.best_top1:.2f}% "
                      f"(epoch {p.best_epoch})")
        return p.best_top1

    def train_one_epoch(self):
        """Train the rest of the current epoch (from ``progress.batch_in_epoch``); returns its mean loss."""
        p = self.progress
        total = self._batches_per_epoch()
        batches = self._epoch_batches()
        images = self.train_loader.batch_size * self.ctx.data_parallel  # a global micro-batch
        self.monitor.start_epoch(p, total)
        self.boundary.start()
        data_start = time.time()
        while p.batch_in_epoch < total:
            try:
                x, y = next(batches)
            except StopIteration:
                break
            data_time = time.time() - data_start
            micro = p.batch_in_epoch % self.accum
            p.batch_in_epoch += 1
            epoch_end = p.batch_in_epoch == total
            self.monitor.micro_batch(images)
            # the boundary's agreement is made inside the step, read with its loss and gradient norm (one host read)
            result = self.updater.micro_batch(x, y, p.updates, micro,
                                              agree=lambda values: self.boundary.agree(values, p.epoch, epoch_end))
            if result is not None:  # an update boundary: the optimizer has stepped (or skipped a non-finite one)
                self._at_boundary(result, epoch_end, data_time)
            data_start = time.time()
        self.step.discard()  # micro-batches of an unfinished update do not carry into the next epoch
        self.monitor.end_epoch()
        return p.mean_loss()

    def _epoch_batches(self):
        """The epoch's batch iterator, from ``progress.batch_in_epoch`` on (a resume skips what was trained)."""
        p = self.progress
        self.sampler.set_epoch(p.epoch, consumed=p.batch_in_epoch * self.train_loader.batch_size)
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(p.epoch)
        self.model.train()
        with rng_preserved():
            return iter(self.train_loader)

    def _at_boundary(self, result, epoch_end, data_time):
        """After an update's last micro-batch: the ranks' agreement, then the applied update's bookkeeping (or the
        non-finite guard), a periodic `last`, and a stop when one was agreed."""
        p = self.progress
        decision = self.boundary.decide(result, p.epoch, epoch_end)
        if decision.counts:  # the epoch's end: corrupt images skipped on all ranks
            self.monitor.corrupt_images(p.epoch, decision.counts[0])
        saved = None
        if decision.nonfinite:
            self.guard.not_applied(result, p)  # halts (raises), or counts the skipped update
        else:
            lr = self.updater.lr  # the rate this update ran at (after_update moves to the next one's)
            p.applied(result)
            p.updates = self.updater.after_update(p.updates)
            self.monitor.update(p, result, lr, data_time, epoch_end, loss_scale=self.step.loss_scale)
            every = self.cfg["output"]["save_every_steps"]
            if every > 0 and p.updates % every == 0:
                saved = self.save("last")
        if decision.stop:
            self.monitor.end_epoch()
            self._stopped(decision, saved)
        self.boundary.start()

    def _stopped(self, decision, saved):
        """Save ``last`` at this update (unless ``saved``: its seconds, already written here; None with no
        seconds: the epoch-end ``last`` is this state), log one line and raise :class:`TrainingStopped`."""
        if saved is None and self.progress.mid_epoch:
            saved = self.save("last")
        msg = self.boundary.stop_message(decision, self.progress, self.checkpoints.path("last"), saved)
        self.log.info(msg)
        raise TrainingStopped(msg)

    def _reconcile_replicas(self):
        """At an epoch's end: one set of BatchNorm statistics for all data-parallel ranks (timm's dist_bn
        "reduce"), and a check that every rank holds the same replicated weights."""
        if self.ctx.data_parallel > 1:
            sums = [self.ctx.average_buffers(m) for m in (self.model, self.ema and self.ema.module) if m]
            self.log.info(f"epoch {self.progress.epoch}: buffers averaged over {self.ctx.data_parallel} ranks "
                          f"(checksum {sum(sums):.6f})")
        if self.ctx.distributed:
            self.log.info(f"epoch {self.progress.epoch}: replicas agree within "
                          f"{self.ctx.replica_divergence(self.model):.3g}")

    # ----------------------------------------------------------------- evaluation
    def evaluate(self, model=None):
        """``{loss, top1, top5, count}`` of ``model`` (default: the trained model) on the validation set."""
        model = model or self.model
        return evaluate(model, self.val_loader, self.ctx, forward=self.step.eval_forward(model), amp=self.amp)

    def _validate(self):
        row, images = self.validation.run(self.evaluate, self.model)
        self.monitor.evaluation(self.progress.epoch, row, images)
        return row


def _counter(name):
    return property(lambda self: getattr(self.progress, name), doc=f"``progress.{name}`` (read-only).")


for _name in Progress.fields():  # trainer.epoch, trainer.updates, ...: the run's counters, read from its Progress
    setattr(Trainer, _name, _counter(_name))
