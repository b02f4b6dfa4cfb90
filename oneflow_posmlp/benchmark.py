"""Throughput, compile time, memory, parameters and FLOPs of a PosMLP on synthetic data (``tools/benchmark.py``).

Modes: ``train-eager`` (forward, cross-entropy, backward, per-group gradient clipping, AdamW step, zero_grad),
``train-graph`` (the same step compiled: :class:`~oneflow_posmlp.engine.graph.TrainGraph`), ``eval-eager``
(``model.eval()`` and ``flow.no_grad()``) and ``eval-graph`` (:class:`~oneflow_posmlp.engine.graph.EvalGraph`).
Each mode runs ``warmup`` untimed steps, the first timed on its own (for a graph: compilation plus one step,
reported as ``compile_s``), then ``steps`` timed ones. Every step ends with a synchronisation (OneFlow runs
kernels asynchronously), so a step's time is wall time from its launch to its last kernel.

FLOPs per image are ``2 x`` the multiply-adds of every convolution, linear layer and token mixing (``N x N``
per window and mixed channel of the gating units), counted by forward hooks on one image: norms,
activations, softmax, bias additions, the gate product ``u * v`` and the positional maps (built once per
step from a few parameters, shared by the batch) are not counted.

Memory: ``peak_rss_mb`` is the process's peak resident set size (``ru_maxrss``) read after each mode, a
high-water mark over the whole process (each mode's figure includes the modes before it);
``peak_rss_growth_mb`` is how much the mode raised it, ``rss_delta_mb`` the change of the current resident
set over the mode (the memory the mode kept). On CUDA, ``gpu_used_mb`` is this process's device memory as
nvidia-smi reports it after the mode.

Data parallel (``ranks > 1``, launched by ``tools/benchmark.py --ranks N`` through
``oneflow.distributed.launch``): the same global batch, ``split(0)`` over the ranks (global tensors, as the
trainer's ``dist.data_parallel``); img/s are global images per second; memory figures are rank 0's.

``--profile`` times the eager forward by kind of operation with synchronising hooks (``oneflow.profiler``
aborts the process on a machine without a CUDA driver in OneFlow 0.9.0, so it is not used).
"""
import gc
import json
import os
import platform
import resource
import shutil
import subprocess
import time
from collections import defaultdict

import oneflow as flow
import oneflow.nn as nn

from .engine.graph import EvalGraph, TrainGraph
from .engine.loss_scaler import DynamicLossScaler, autocast
from .engine.optim import clip_param_groups
from .models import build_model, layers, token_mixing
from .models.posgu import SGU, PoSGU
from .parallel.context import ParallelContext

MODES = ("train-eager", "train-graph", "eval-eager", "eval-graph")
# Environment that changes CPU speed, printed with the figures: OpenBLAS's kernel choice (after an OpenBLAS
# call OneFlow's scalar elementwise kernels can run ~3x slower on some cores) and the VM worker setting.
ENV_SHOWN = ("OPENBLAS_CORETYPE", "ONEFLOW_VM_COMPUTE_ON_WORKER_THREAD", "OMP_NUM_THREADS")


class BenchmarkError(ValueError):
    """A benchmark request that cannot run (unknown mode, CUDA missing, ...); the message names the fix."""


# ----------------------------------------------------------------------------- measurements
def sync():
    """Wait for every queued OneFlow kernel (eager and graph)."""
    flow._oneflow_internal.eager.Sync()


def peak_rss_mb():
    """Peak resident set size of this process so far, MB (Linux reports ``ru_maxrss`` in KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb():
    """Current resident set size of this process, MB, or None where ``/proc`` is missing."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError, IndexError):
        return None


def gpu_used_mb():
    """Device memory this process holds according to nvidia-smi, MB, or None (no nvidia-smi, no entry)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    used = [float(mem) for pid, mem in (line.split(",")[:2] for line in out.splitlines() if "," in line)
            if int(pid) == os.getpid()]
    return sum(used) if used else None


def threads():
    """CPU threads available to this process (``OMP_NUM_THREADS`` if set, else the CPU affinity)."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


# ----------------------------------------------------------------------------- FLOPs
def _mixed_channels(m, channels):
    """Channels a gating unit token-mixes out of its ``channels`` inputs (each mixing is ``N x N``)."""
    if isinstance(m, SGU):  # chunks - 1 dense mixings, each over one chunk
        return (channels - m.pad_dim) // m.chunks * (m.chunks - 1)
    return channels // m.chunks  # PoSGU: the gated half (chunks 2) or all channels (chunks 1)


def count_flops(model, img_size=None, in_chans=None):
    """FLOPs (2 x multiply-adds) of one image's forward pass: ``(total, {"conv"|"linear"|"token_mixing": flops})``.

    ``img_size`` and ``in_chans`` default to the model's. Runs one forward of a zero image in eval mode with
    hooks on ``nn.Conv2d``, ``nn.Linear`` and the gating units (:class:`PoSGU`, :class:`SGU`).
    """
    img_size = tuple(img_size or model.img_size)
    in_chans = in_chans or model.in_chans
    by_kind = defaultdict(int)

    def conv_hook(m, inputs, out):
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        by_kind["conv"] += 2 * out.numel() * k

    def linear_hook(m, inputs, out):
        by_kind["linear"] += 2 * out.numel() * m.in_features

    def mixing_hook(m, inputs, out):
        B, W, N, D = inputs[0].shape  # every mixed channel of every window maps N tokens to N
        by_kind["token_mixing"] += 2 * B * W * N * N * _mixed_channels(m, D)

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(conv_hook)
        elif isinstance(m, nn.Linear):
            m.register_forward_hook(linear_hook)
        elif isinstance(m, (PoSGU, SGU)):
            m.register_forward_hook(mixing_hook)
    was_training = model.training
    model.eval()
    try:
        with flow.no_grad():
            model(flow.zeros(1, in_chans, *img_size, device=_device_of(model)))
    finally:
        _clear_hooks(model)
        model.train(was_training)
    return sum(by_kind.values()), dict(by_kind)


def _device_of(model):
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else flow.device("cpu")


def _clear_hooks(model):
    """Remove every forward hook of ``model`` (OneFlow 0.9.0's ``register_forward_hook`` returns no handle;
    the benchmark's model is its own, so nothing else is lost)."""
    for m in model.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()


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


def resolve_model(model, img_size=None):
    """``(label, model_cfg)`` from a registry name or a ``model:`` dict, with an optional ``img_size`` override.
    Unknown names and sizes the windows do not tile raise :class:`~oneflow_posmlp.models.ModelConfigError`."""
    cfg = {"name": model} if isinstance(model, str) else dict(model)
    if img_size is not None:
        cfg["img_size"] = img_size
    label = cfg.get("name") or "custom"
    return label, cfg


# ----------------------------------------------------------------------------- steps
def _eager_train_step(model, criterion, x, y, amp, device):
    opt = flow.optim.AdamW(clip_param_groups(model, 0.05, clip_grad=1.0), lr=1e-4)
    scaler = DynamicLossScaler(enabled=amp)

    def step():
        with autocast(amp, device):
            loss = criterion(model(x), y)
        scaler.scale_loss(loss).backward()
        if scaler.unscale_and_check([p for g in opt.param_groups for p in g.parameters]):
            for g in opt.param_groups:  # per group, as the graph clips
                flow.nn.utils.clip_grad_norm_(g.parameters, 1.0)
            opt.step()
        opt.zero_grad()
        return loss

    return step, opt


def make_step(mode, model, criterion, x, y, amp=False, device="cpu"):
    """``(step, held)``: a no-argument callable running one step of ``mode``, and the objects it needs alive
    (optimizer, graph) so the caller can drop them after the mode."""
    kind, how = mode.split("-")
    model.train(kind == "train")
    if mode == "train-eager":
        return _eager_train_step(model, criterion, x, y, amp, device)
    if mode == "train-graph":
        opt = flow.optim.AdamW(clip_param_groups(model, 0.05, clip_grad=1.0), lr=1e-4)
        graph = TrainGraph(model, criterion, opt, amp=amp)
        return (lambda: graph(x, y)), (opt, graph)
    if mode == "eval-graph":
        graph = EvalGraph(model, amp=amp)
        return (lambda: graph(x)), graph

    def step():
        with flow.no_grad(), autocast(amp, device):
            return model(x)

    return step, None


def _timed(step, warmup, steps):
    """``(seconds of the first call, [seconds of each timed call])``, synchronising after every call."""
    start = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        step()
    sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return first, times


def run_mode(mode, model, criterion, x, y, warmup, steps, amp=False, device="cpu"):
    """Time one mode; returns its JSON-able entry."""
    gc.collect()
    rss0, peak0 = current_rss_mb(), peak_rss_mb()
    wall0 = time.perf_counter()
    step, held = make_step(mode, model, criterion, x, y, amp, device)
    first, times = _timed(step, warmup, steps)
    wall = time.perf_counter() - wall0
    mean = sum(times) / len(times)
    batch = x.shape[0]  # the global batch (a global tensor's shape is the whole)
    entry = {"images_per_s": batch / mean, "step_ms": mean * 1000, "step_ms_min": min(times) * 1000,
             "step_ms_max": max(times) * 1000, "timed_steps": len(times), "first_call_s": first, "wall_s": wall}
    if mode.endswith("graph"):
        entry["compile_s"] = first  # the graph's first call: compilation plus one step
        entry["compile_only_s"] = max(first - mean, 0.0)  # minus one timed step: the compilation alone, roughly
    entry["peak_rss_mb"] = peak_rss_mb()
    entry["peak_rss_growth_mb"] = entry["peak_rss_mb"] - peak0
    if device == "cuda":
        entry["gpu_used_mb"] = gpu_used_mb()
    del step, held
    gc.collect()
    rss1 = current_rss_mb()
    entry["rss_delta_mb"] = None if rss0 is None or rss1 is None else rss1 - rss0
    return entry


def run_benchmark(model, batch_size=8, steps=5, warmup=1, modes=MODES, device="cpu", amp=False, profile=False,
                  img_size=None, seed=0, profile_repeat=None, label=None):
    """Benchmark ``model`` (a registry name such as ``posmlp_t`` or a config ``model:`` dict) on synthetic
    images and labels; returns a JSON-able dict (see :func:`format_table`). ``label`` names the model in the
    output (default: the registry name, or ``custom``).

    Raises :class:`BenchmarkError` for a bad request and
    :class:`~oneflow_posmlp.models.ModelConfigError` for a bad model (unknown name, untileable ``img_size``).
    """
    modes = list(modes)
    ranks = flow.env.get_world_size()
    check_request(batch_size, steps, warmup, modes, device, amp, ranks)
    name, cfg = resolve_model(model, img_size)
    label = label or name
    flow.manual_seed(seed)
    rss_start = current_rss_mb()
    net = build_model(cfg)
    img = tuple(net.img_size)
    flops, flops_by_kind = count_flops(net)
    # one process: local tensors; several: data parallel, each rank holding its shard of the global batch
    ctx = ParallelContext({"device": device, "data_parallel": 0, "tensor_parallel": 1, "pipeline_parallel": 1})
    ctx.apply(net)
    local = batch_size // ranks
    flow.manual_seed(seed + ctx.rank)
    x, y = ctx.to_global_batch(flow.randn(local, net.in_chans, *img), flow.randint(0, net.num_classes, (local,)))
    criterion = nn.CrossEntropyLoss()
    result = {
        "model": label, "model_config": net.config, "batch_size": batch_size, "img_size": list(img),
        "device": device, "amp": amp, "params": sum(p.numel() for p in net.parameters()),
        "flops_per_image": flops, "flops_by_kind": flops_by_kind,
        "flops_note": "2 x multiply-adds of conv, linear and token mixing, one image; norms, activations, "
                      "softmax, biases, the gate product and the positional maps not counted",
        "steps": steps, "warmup": warmup, "oneflow": flow.__version__, "python": platform.python_version(),
        "threads": threads(), "cpu_count": os.cpu_count(), "ranks": ranks,
        "env": {k: os.environ.get(k) for k in ENV_SHOWN},
        "memory_note": "peak_rss_mb: process peak RSS (ru_maxrss) after the mode, cumulative over modes; "
                       "rss_delta_mb: change of the current RSS over the mode",
        "rss_at_start_mb": rss_start, "rss_model_built_mb": current_rss_mb(), "modes": {},
    }
    for mode in modes:
        result["modes"][mode] = run_mode(mode, net, criterion, x, y, warmup, steps, amp, device)
    if profile:
        result["profile"] = profile_forward(net, x, repeat=profile_repeat or steps)
    return result


# ----------------------------------------------------------------------------- profile
# Kinds of module timed by hooks (exclusive time: a module's time minus that of timed modules inside it).
_KINDS = ((nn.LayerNorm, "LayerNorm"), (nn.BatchNorm2d, "BatchNorm2d"), (nn.Linear, "Linear"),
          (nn.Conv2d, "Conv2d"), (nn.GELU, "GELU"), (PoSGU, "PoSGU rest (chunk, bias, u*v)"),
          (SGU, "SGU (dense mixing, gate)"))
# Module-level functions timed by patching them for the duration of the profile: (module, name, kind).
_FUNCTIONS = ((layers, "window_partition", "window partition/reverse"),
              (layers, "window_reverse", "window partition/reverse"),
              (token_mixing, "group_mix", "token mixing (group_mix bmm)"))
_MAP_KIND = "positional maps (GQPE/LRPE token_map)"


class _ExclusiveTimer:
    """Times nested regions; each region's own time (minus nested regions) goes to its kind."""

    def __init__(self):
        self.totals = defaultdict(float)
        self.stack = []  # [kind, start, time of nested regions]

    def enter(self, kind):
        sync()
        self.stack.append([kind, time.perf_counter(), 0.0])

    def exit(self):
        sync()
        kind, start, nested = self.stack.pop()
        spent = time.perf_counter() - start
        self.totals[kind] += spent - nested
        if self.stack:
            self.stack[-1][2] += spent

    def wrap(self, fn, kind):
        def timed(*args, **kwargs):
            self.enter(kind)
            try:
                return fn(*args, **kwargs)
            finally:
                self.exit()
        return timed


def _kind(m):
    for cls, name in _KINDS:
        if isinstance(m, cls):
            return name
    return None


def profile_forward(model, x, repeat=3):
    """Eager forward time (eval mode, no grad) by kind of operation: ``{"forward_ms", "hooked_forward_ms",
    "by_kind_ms"}``. Hooks synchronise around LayerNorm, BatchNorm2d, Linear, Conv2d, GELU and the gating
    units; window partition/reverse, ``group_mix`` and the positional maps are timed by patching them. The
    rest (shifts, permutes, reshapes, residual adds, pooling, dropout) is ``other``. ``forward_ms`` is an
    unhooked forward; the per-kind figures come from hooked ones (``hooked_forward_ms``: the synchronisation
    adds a little)."""
    timer = _ExclusiveTimer()
    was_training = model.training
    model.eval()

    def pre(m, inputs):
        timer.enter(_kind(m))

    def post(m, inputs, out):
        timer.exit()

    patched = [(mod, name, getattr(mod, name)) for mod, name, _ in _FUNCTIONS]
    map_classes = {type(m) for m in model.modules() if isinstance(m, token_mixing.TokenMap)}
    patched += [(cls, "token_map", cls.__dict__["token_map"]) for cls in map_classes if "token_map" in cls.__dict__]
    if map_classes:  # in eval the maps come from the cache (computed once per weights version): time its check too
        patched.append((token_mixing.TokenMap, "cached_token_map", token_mixing.TokenMap.__dict__["cached_token_map"]))
    try:
        with flow.no_grad():
            model(x)  # warm-up
            sync()
            start = time.perf_counter()
            for _ in range(repeat):
                model(x)
            sync()
            plain = (time.perf_counter() - start) / repeat
            for m in model.modules():
                if _kind(m) is not None:
                    m.register_forward_pre_hook(pre)
                    m.register_forward_hook(post)
            for (mod, name, _), (_, _, kind) in zip(patched, _FUNCTIONS):
                setattr(mod, name, timer.wrap(getattr(mod, name), kind))
            for cls, name, fn in patched[len(_FUNCTIONS):]:
                setattr(cls, name, timer.wrap(fn, _MAP_KIND))
            model(x)  # warm-up with hooks
            timer.totals.clear()
            sync()
            start = time.perf_counter()
            for _ in range(repeat):
                model(x)
            sync()
            hooked = (time.perf_counter() - start) / repeat
    finally:
        for owner, name, fn in patched:
            setattr(owner, name, fn)
        _clear_hooks(model)
        model.train(was_training)
    rows = {k: v / repeat * 1000 for k, v in timer.totals.items()}
    rows["other"] = max(hooked * 1000 - sum(rows.values()), 0.0)
    return {"forward_ms": plain * 1000, "hooked_forward_ms": hooked * 1000, "repeat": repeat,
            "batch_size": x.shape[0],
            "by_kind_ms": dict(sorted(rows.items(), key=lambda kv: -kv[1])),
            "note": "eager forward, eval mode, no grad; exclusive time per kind with a synchronisation at every "
                    "timed boundary; % of the hooked forward"}


# ----------------------------------------------------------------------------- output
def _fmt_flops(flops):
    return f"{flops / 1e9:.2f} GFLOPs" if flops >= 1e8 else f"{flops / 1e6:.2f} MFLOPs"


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def format_table(result):
    """A readable table of a :func:`run_benchmark` result."""
    lines = [f"{result['model']}: {result['params']:,} parameters, {_fmt_flops(result['flops_per_image'])}/image "
             f"(2 x MACs), {result['img_size'][0]}x{result['img_size'][1]}, batch {result['batch_size']}, "
             f"{result['device']}{' amp' if result['amp'] else ''}, oneflow {result['oneflow']}, "
             f"{result['threads']} threads" + (f", {result['ranks']} data-parallel ranks (img/s global, memory of "
                                               f"rank 0)" if result.get("ranks", 1) > 1 else ""),
             "env: " + ", ".join(f"{k}={v if v is not None else '(unset)'}" for k, v in result.get("env", {}).items()),
             f"step = wall time from launch to last kernel, mean of {result['steps']} timed steps after "
             f"{result['warmup']} warm-up; compile = a graph's first call (compile + 1 step); memory after each "
             f"mode (peak = process high-water mark)",
             f"{'mode':<12} {'img/s':>9} {'step ms':>9} {'min ms':>9} {'compile s':>10} {'peak RSS MB':>12} "
             f"{'peak +MB':>9} {'RSS delta MB':>13}"]
    for mode, r in result["modes"].items():
        lines.append(f"{mode:<12} {r['images_per_s']:>9.2f} {r['step_ms']:>9.0f} {r['step_ms_min']:>9.0f} "
                     f"{_fmt(r.get('compile_s'), '.1f'):>10} {r['peak_rss_mb']:>12.0f} "
                     f"{r['peak_rss_growth_mb']:>9.0f} {_fmt(r['rss_delta_mb'], '.0f'):>13}"
                     + (f"  gpu {_fmt(r.get('gpu_used_mb'), '.0f')} MB" if result["device"] == "cuda" else ""))
    if "profile" in result:
        p = result["profile"]
        lines.append(f"eager forward (eval, batch {p['batch_size']}) by kind: {p['forward_ms']:.0f} ms per forward "
                     f"unhooked, {p['hooked_forward_ms']:.0f} ms hooked (mean of {p['repeat']}):")
        for kind, ms in p["by_kind_ms"].items():
            lines.append(f"  {kind:<40} {ms:>9.1f} ms {100 * ms / p['hooked_forward_ms']:>6.1f}%")
    return "\n".join(lines)


def write_json(result, path):
    """Write ``result`` as indented JSON (creating the directory)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2, default=str)
