"""The benchmark's modes and their timing, run through the trainer's own objects.

A run takes a validated config (``load_config``: a YAML file, or the schema defaults with a model name, with
``--opts``; :func:`benchmark_config` adds the request's batch, image size, device and AMP as overrides) and
builds what training builds from it: the model (``build_model``, seeded with ``train.seed``), its layout
(``ParallelContext(cfg['dist'])``), the train criterion (``build_train_criterion``, Mixup/CutMix targets and
label smoothing as configured) and, per train mode, the optimizer, lr schedule and step object of
:func:`~oneflow_posmlp.engine.step.build_training` with ``train.graph`` set by the mode. No optimizer
setting is written here: weight decay, lr (scaled to the global batch), betas, eps, clipping and its scope are
the config's.

Modes (on synthetic images and labels, the same batch every step):

- ``train-eager`` / ``train-graph``: one update of the trainer's update routine
  (:class:`~oneflow_posmlp.engine.update.Updater`) over :class:`~oneflow_posmlp.engine.step.EagerStep` /
  :class:`~oneflow_posmlp.engine.step.GraphStep` (forward, loss, backward, clipping, AdamW step; the graph with
  the lr schedule inside), ``train.grad_accum_steps`` micro-batches each, with the per-micro-batch drop-path
  masks and seeds of training, then, after an applied update, the schedule's ``step_update`` (a skipped,
  non-finite update does not move it, nor the update count its seeds come from). Mixup/CutMix mixes the batch
  once before timing (``engine.update.mix`` with update 0's seeds; in training it runs on every loaded batch, outside
  the step object); the EMA update is not timed (the updater runs without the EMA).
- ``eval-eager`` / ``eval-graph``: one batch's logits as :func:`~oneflow_posmlp.engine.evaluate.evaluate`
  computes them (``eval_logits``: eval mode, no grad, autocast with AMP; the graph is ``eval_forward``'s
  :class:`~oneflow_posmlp.engine.graph.EvalGraph`).

Each mode runs ``warmup`` untimed steps, the first timed on its own (for a graph: compilation plus one step,
reported as ``compile_s``), then ``steps`` timed ones. Every step ends with a synchronisation (OneFlow runs
kernels asynchronously), so a step's time is wall time from its launch to its last kernel.

Memory: ``peak_rss_mb`` is the process's peak RSS read after each mode (cumulative: each mode's figure includes
the modes before it), ``peak_rss_growth_mb`` how much the mode raised it, ``rss_delta_mb`` the change of the
current RSS over the mode (what the mode kept). On CUDA ``gpu_used_mb`` after the mode.

Several ranks (``--ranks N``, launched by the command line): the layout of ``cfg['dist']`` (by default data
parallel over all ranks, as the trainer), the same global batch ``split(0)`` over the data-parallel ranks;
img/s are global images per second; memory figures are rank 0's. Also per rank: the forward FLOPs per image
of this rank's share of the layers (``count_flops(..., ctx=...)``) and a train step's (3 x forward x the
rank's images), and for ``train-graph`` the bytes each rank sends per step for the compiled plan's SBP
conversions, per block (:mod:`oneflow_posmlp.parallel.traffic`).
"""
import gc
import time

import oneflow as flow

from ..config import load_config
from ..data import build_mixup, build_train_criterion
from ..engine.evaluate import eval_forward, eval_logits
from ..engine.mfu import TRAIN_FACTOR, device_peak, mfu
from ..engine.step import build_training
from ..engine.update import Updater, mix
from ..models import build_model
from ..models.drop import drop_path_modules
from ..models.flops import FLOPS_NOTE, count_flops
from ..parallel import ParallelContext
from ..parallel.traffic import traffic_by_block
from .measure import current_rss_mb, environment, gpu_used_mb, peak_rss_mb, sync
from .profile import profile_forward, profile_train_step

MODES = ("train-eager", "train-graph", "eval-eager", "eval-graph")


class BenchmarkError(ValueError):
    """A benchmark request that cannot run (unknown mode, CUDA missing, ...); the message names the fix."""


# ----------------------------------------------------------------------------- requests
def check_request(batch_size=8, steps=5, warmup=1, modes=MODES, device="cpu", amp=False, ranks=1):
    """Raise :class:`BenchmarkError` for a request that cannot run, before any model is built."""
    if not isinstance(ranks, int) or ranks < 1:
        raise BenchmarkError(f"--ranks must be an integer >= 1, got {ranks!r}")
    if isinstance(batch_size, int) and batch_size % ranks:
        raise BenchmarkError(f"--batch-size {batch_size} (the global batch) does not split over --ranks {ranks}; "
                             f"give a multiple of {ranks}")
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise BenchmarkError(f"unknown mode(s) {', '.join(unknown) or '(none given)'}; --modes takes a comma-separated "
                             f"subset of {','.join(MODES)}")
    if device not in ("cpu", "cuda"):
        raise BenchmarkError(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not flow.cuda.is_available():
        raise BenchmarkError("--device cuda but OneFlow sees no CUDA device (no GPU, or the driver is older than "
                             "OneFlow's CUDA runtime); run with --device cpu")
    if amp and device != "cuda":
        raise BenchmarkError("--amp needs --device cuda (float16 autocast is CUDA-only here); drop --amp on CPU")
    for name, value in (("--batch-size", batch_size), ("--steps", steps), ("--warmup", warmup)):
        if not isinstance(value, int) or value < 1:
            raise BenchmarkError(f"{name} must be an integer >= 1, got {value!r} (a graph's first call is its "
                                 f"compilation, so --warmup is at least 1)")


def benchmark_config(config=None, model=None, opts=(), batch_size=8, img_size=None, device=None, amp=False):
    """The validated config a benchmark runs: the YAML file ``config`` (or, with ``model``, the schema defaults,
    i.e. the official recipe's ``train:`` section, with ``model.name=model``) <- ``opts`` <- the request:
    ``train.batch_size=batch_size`` (the global batch), ``model.img_size`` (``(H, W)``), ``dist.device`` and
    ``train.amp=true`` when given. Raises ConfigError (bad key or value, unknown model, untileable size)."""
    head = [f"model.name={model}"] if model else []
    request = [f"train.batch_size={batch_size}"]
    if img_size is not None:
        request.append(f"model.img_size=[{int(img_size[0])}, {int(img_size[1])}]")
    if device is not None:
        request.append(f"dist.device={device}")
    if amp:
        request.append("train.amp=true")
    return load_config(config, [*head, *opts, *request])


# ----------------------------------------------------------------------------- the run's objects
class Bench:
    """The model, its layout and the synthetic batch of one benchmark run, built as the trainer builds them."""

    def __init__(self, cfg):
        self.cfg = cfg
        t = cfg["train"]
        self.ctx = ctx = ParallelContext(cfg["dist"])
        self.batch_size, self.accum, self.seed = t["batch_size"], t["grad_accum_steps"], t["seed"]
        self.amp = t["amp"] and ctx.device == "cuda"  # as the trainer: AMP is CUDA-only
        if self.batch_size % (ctx.data_parallel * self.accum):
            raise BenchmarkError(f"--batch-size {self.batch_size} does not split into {ctx.data_parallel} data-parallel "
                                 f"rank(s) x train.grad_accum_steps {self.accum} micro-batches; give a multiple of "
                                 f"{ctx.data_parallel * self.accum}")
        self.local = self.batch_size // ctx.data_parallel  # this rank's images per update
        self.micro = self.local // self.accum
        self.mixup = build_mixup(cfg)
        if self.mixup is not None and self.micro % 2:
            raise BenchmarkError(f"Mixup/CutMix needs an even micro-batch per rank, got {self.micro}; give an even "
                                 f"--batch-size per rank, or --opts aug.mixup=0 aug.cutmix=0")
        self.criterion = build_train_criterion(cfg, self.mixup)
        flow.manual_seed(self.seed)
        self.model = build_model(cfg["model"])
        self.flops, self.flops_by_kind = count_flops(self.model)  # on the local model, one image
        self.peak = device_peak(ctx.device, self.amp)  # measured once per process on CPU (one core's sgemm)
        ctx.apply(self.model)
        # this rank's share (tensor parallelism splits layers; data parallelism gives each rank its own images)
        self.rank_flops, self.rank_flops_by_kind = (count_flops(self.model, ctx=ctx) if ctx.distributed
                                                    else (self.flops, self.flops_by_kind))
        self.drop_paths = drop_path_modules(self.model)
        m = self.model
        flow.manual_seed(self.seed + ctx.rank)
        self.x = flow.randn(self.local, m.in_chans, *m.img_size)  # this rank's shard of the global batch
        self.y = flow.randint(0, m.num_classes, (self.local,))
        # the train micro-batches: (x, y) local tensors, mixed as the trainer's update routine mixes each loaded
        # batch (its seeds: update 0), once, before timing
        self.micro_batches = [mix(self.mixup, self.x[i * self.micro:(i + 1) * self.micro],
                                  self.y[i * self.micro:(i + 1) * self.micro], (self.seed, 0, i), ctx.data_rank)
                              for i in range(self.accum)]
        self.eval_x = ctx.to_global_batch(self.x)
        d = cfg["data"]  # the schedule's epoch: that of a data.synthetic run of the config
        batches = d["synthetic_size"] // self.micro // ctx.data_parallel
        if d["limit_train_batches"] > 0:
            batches = min(batches, d["limit_train_batches"])
        self.updates_per_epoch = max(batches // self.accum, 1)

    def training(self, graph):
        """The optimizer, schedule and step object of the config with ``train.graph=graph``
        (:func:`~oneflow_posmlp.engine.step.build_training`, as the trainer)."""
        cfg = dict(self.cfg, train=dict(self.cfg["train"], graph=graph))
        return build_training(cfg, self.model, self.criterion, self.ctx, self.updates_per_epoch)

    def updater(self, training):
        """The trainer's update routine (:class:`~oneflow_posmlp.engine.update.Updater`) over ``training``'s step
        object and schedule, with the config's Mixup/CutMix and the model's drop paths, without the EMA (the
        trainer's EMA update is not timed)."""
        return Updater(training.step, training.scheduler, self.ctx, self.seed, self.drop_paths, self.model,
                       mixup=self.mixup)

    def make_step(self, mode):
        """``(step, held)``: a no-argument callable running one step of ``mode``, and the objects it needs alive
        (step object, optimizer, graph) so the caller can drop them after the mode."""
        kind, how = mode.split("-")
        if kind == "train":
            self.model.train()
            training = self.training(graph=how == "graph")
            updater = self.updater(training)
            updates = [0]

            def step():  # one update of the trainer's routine, on the batch mixed once in __init__
                result, updates[0] = updater.update(self.micro_batches, updates[0], mixed=True)
                return result

            return step, training
        self.model.eval()
        forward = eval_forward(self.model, self.ctx, graph=how == "graph", amp=self.amp)

        def step():
            with flow.no_grad():
                return eval_logits(self.model, self.eval_x, self.ctx, forward, self.amp)

        return step, forward


def profile_train(bench, repeat, clock):
    """The eager train step by module kind and phase (``profile.profile_train_step``) on the benchmark's batch."""
    bench.model.train()
    updater = bench.updater(bench.training(graph=False))
    return profile_train_step(updater, bench.micro_batches, repeat=repeat, clock=clock, mixed=True)


def describe_training(training):
    """The train step's optimizer settings as built (read off the optimizer, not the config): JSON-able.
    ``clip_grad``: the eager step's clipping norm, or the graph's in-optimizer ``clip_grad_max_norm``."""
    groups = training.optimizer.param_groups
    g = groups[0]
    clip = getattr(training.step, "clip_grad", None)
    if clip is None:
        clip = g["clip_grad_max_norm"] if "clip_grad_max_norm" in g else 0.0
    return {"optimizer": type(training.optimizer).__name__, "lr": training.lr, "betas": list(g["betas"]),
            "eps": g["eps"], "weight_decay": [grp["weight_decay"] for grp in groups], "clip_grad": clip,
            "clip_scope": training.clip_scope, "amp": training.amp}


# ----------------------------------------------------------------------------- timing
def _timed(step, warmup, steps):
    """``(seconds of the first call, [seconds of each timed call], [CPU seconds of each])``, synchronising after
    every call; CPU seconds are this process's (every thread), which other jobs on the machine hardly change."""
    start = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        step()
    sync()
    times, cpu = [], []
    for _ in range(steps):
        start, cpu0 = time.perf_counter(), time.process_time()
        step()
        sync()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu0)
    return first, times, cpu


def mode_mfu(bench, mode, entry):
    """The mode's FLOPs and MFU (``engine/mfu.py``): FLOPs per image of the step (3x the forward for train),
    achieved FLOP/s per device from the mean step, MFU against ``bench.peak``; and ``mfu_cpu_time``, the same
    from the fastest step's CPU seconds on this rank (robust to other jobs on a shared machine; one process
    computes on one core)."""
    train = mode.startswith("train")
    per_image = bench.flops * (TRAIN_FACTOR if train else 1)
    achieved, value = mfu(entry["images_per_s"], bench.flops, bench.ctx.world, bench.peak["peak_flops"], train)
    out = {"flops_per_image": per_image, "achieved_flops_per_device": achieved, "mfu": value}
    if bench.ctx.device == "cpu" and bench.peak["peak_flops"]:
        local = bench.batch_size / bench.ctx.world  # this rank's images per step
        out["mfu_cpu_time"] = local * per_image / (entry["cpu_ms_min"] / 1000) / bench.peak["peak_flops"]
    return out


def run_mode(bench, mode, warmup, steps):
    """Time one mode; returns its JSON-able entry."""
    gc.collect()
    rss0, peak0 = current_rss_mb(), peak_rss_mb()
    wall0 = time.perf_counter()
    step, held = bench.make_step(mode)
    first, times, cpu = _timed(step, warmup, steps)
    wall = time.perf_counter() - wall0
    mean = sum(times) / len(times)
    entry = {"images_per_s": bench.batch_size / mean, "step_ms": mean * 1000, "step_ms_min": min(times) * 1000,
             "step_ms_max": max(times) * 1000, "timed_steps": len(times), "first_call_s": first, "wall_s": wall,
             "cpu_ms": sum(cpu) / len(cpu) * 1000, "cpu_ms_min": min(cpu) * 1000}
    entry.update(mode_mfu(bench, mode, entry))
    if mode.endswith("graph"):
        entry["compile_s"] = first  # the graph's first call: compilation plus one step
        entry["compile_only_s"] = max(first - mean, 0.0)  # minus one timed step: the compilation alone, roughly
    if mode.startswith("train"):
        entry["train_step"] = describe_training(held)
    if mode == "train-graph" and bench.ctx.distributed:  # what the compiled plan moves between ranks, per block
        by_block = traffic_by_block(held.step.graph)
        entry["boxing_bytes_per_rank"] = sum(by_block.values())
        entry["boxing_bytes_per_rank_by_block"] = by_block
    entry["peak_rss_mb"] = peak_rss_mb()
    entry["peak_rss_growth_mb"] = entry["peak_rss_mb"] - peak0
    if bench.ctx.device == "cuda":
        entry["gpu_used_mb"] = gpu_used_mb()
    del step, held
    gc.collect()
    rss1 = current_rss_mb()
    entry["rss_delta_mb"] = None if rss0 is None or rss1 is None else rss1 - rss0
    return entry


def run_benchmark(cfg, modes=MODES, steps=5, warmup=1, profile=False, profile_repeat=None, label=None,
                  profile_clock="wall"):
    """Benchmark the config ``cfg`` (:func:`benchmark_config`) on synthetic images and labels; returns a
    JSON-able dict (``oneflow_posmlp.bench.report.format_table`` prints it). ``label`` names the model in the
    output (default: the registry name, or ``custom``). Raises :class:`BenchmarkError` for a bad request."""
    modes = list(modes)
    t, device = cfg["train"], cfg["dist"]["device"]
    check_request(t["batch_size"], steps, warmup, modes, device, False, flow.env.get_world_size())
    rss_start = current_rss_mb()
    bench = Bench(cfg)
    net, ctx = bench.model, bench.ctx
    result = {
        "model": label or cfg["model"].get("name") or "custom", "model_config": net.config,
        "batch_size": bench.batch_size, "img_size": list(net.img_size), "device": device, "amp": bench.amp,
        "params": sum(p.numel() for p in net.parameters()),
        "flops_per_image": bench.flops, "flops_by_kind": bench.flops_by_kind, "flops_note": FLOPS_NOTE,
        "peak": bench.peak,
        "flops_per_image_per_rank": bench.rank_flops, "flops_by_kind_per_rank": bench.rank_flops_by_kind,
        "images_per_rank": bench.local,  # a train step's FLOPs per rank: ~3 x forward (backward ~2 x) x these
        "train_step_flops_per_rank": 3 * bench.rank_flops * bench.local,
        "steps": steps, "warmup": warmup, "grad_accum_steps": bench.accum, **environment(),
        "ranks": ctx.world, "layout": {"data_parallel": ctx.data_parallel, "tensor_parallel": ctx.tensor_parallel,
                                       "tensor_parallel_mode": ctx.tensor_parallel_mode,
                                       "pipeline_parallel": ctx.pipeline_parallel},
        "memory_note": "peak_rss_mb: process peak RSS (ru_maxrss) after the mode, cumulative over modes; "
                       "rss_delta_mb: change of the current RSS over the mode",
        "rss_at_start_mb": rss_start, "rss_model_built_mb": current_rss_mb(), "modes": {},
    }
    for mode in modes:
        result["modes"][mode] = run_mode(bench, mode, warmup, steps)
    if profile:
        result["profile"] = profile_forward(net, bench.eval_x, repeat=profile_repeat or steps, clock=profile_clock)
        if any(m.startswith("train") for m in modes):
            result["train_profile"] = profile_train(bench, repeat=profile_repeat or steps, clock=profile_clock)
    return result
