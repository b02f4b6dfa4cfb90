"""Throughput, compile time, memory, parameters and FLOPs of a PosMLP on synthetic data (``tools/benchmark.py``).

Modes: ``train-eager`` (forward, loss, backward, AdamW step), ``train-graph`` (the same step compiled:
:class:`~oneflow_posmlp.engine.graph.TrainGraph`), ``eval-eager`` and ``eval-graph`` (forward in eval mode).
Each mode runs ``warmup`` untimed steps (for graphs the first is the compilation, reported on its own) and
``steps`` timed ones, waiting for OneFlow's asynchronous kernels before reading the clock.

FLOPs per image are counted as 2 x the multiply-adds of every convolution, linear layer and token mixing
(``N x N`` per window and gated channel; gMLP's SGU too); norms, activations and softmax are not counted.
Memory is the process's peak resident set size (``ru_maxrss``) after each mode: a high-water mark that only
grows, so each mode's figure includes everything before it.
"""
import json
import platform
import resource
import time
from collections import defaultdict

import oneflow as flow
import oneflow.nn as nn

from .engine.graph import EvalGraph, TrainGraph, clip_param_groups
from .models import build_model
from .models.posgu import SGU, PoSGU

MODES = ("train-eager", "train-graph", "eval-eager", "eval-graph")


class BenchmarkError(ValueError):
    """A benchmark request that cannot run (unknown mode, CUDA missing, ...)."""


def sync():
    """Wait for every queued OneFlow kernel."""
    flow._oneflow_internal.eager.Sync()


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def count_flops(model, img_size, in_chans=3):
    """FLOPs (2 x multiply-adds) of one image's forward pass, by module kind: ``(total, {kind: flops})``."""
    by_kind = defaultdict(int)

    def conv_hook(m, inputs, out):
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        by_kind["conv"] += 2 * out.numel() * k

    def linear_hook(m, inputs, out):
        by_kind["linear"] += 2 * out.numel() * m.in_features

    def mixing_hook(m, inputs, out):
        x = inputs[0]  # (B, W, N, D): every gated channel of every window mixes N tokens into N
        B, W, N, D = x.shape
        by_kind["token_mixing"] += 2 * B * W * N * N * (D // m.chunks)

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
            model(flow.zeros(1, in_chans, *img_size))
    finally:
        _clear_hooks(model)
        model.train(was_training)
    return sum(by_kind.values()), dict(by_kind)


def _clear_hooks(model):
    """Remove every forward hook of ``model`` (OneFlow 0.9.0's ``register_forward_hook`` returns no handle; the
    benchmark's model is its own, so nothing else is lost)."""
    for m in model.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()


def _timed(step, warmup, steps):
    """``(seconds of the first call, [seconds of each timed call])``."""
    start = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - start
    for _ in range(max(warmup - 1, 0)):
        step()
    sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return first, times


def run_benchmark(model_cfg, batch_size=8, steps=5, warmup=1, modes=MODES, device="cpu", amp=False, profile=False,
                  seed=0):
    """Benchmark ``model_cfg`` (a registry name or a ``model:`` dict); returns a JSON-able dict of results."""
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise BenchmarkError(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    if device == "cuda" and not flow.cuda.is_available():
        raise BenchmarkError("--device cuda but OneFlow sees no CUDA device; use --device cpu")
    if amp and device != "cuda":
        raise BenchmarkError("--amp needs --device cuda (OneFlow's autocast on CPU is not supported here)")
    if steps < 1 or warmup < 1 or batch_size < 1:
        raise BenchmarkError(f"--steps, --warmup and --batch-size must be >= 1 (got {steps}, {warmup}, {batch_size})")
    flow.manual_seed(seed)
    model = build_model(model_cfg) if isinstance(model_cfg, dict) else build_model({"name": model_cfg})
    img_size = tuple(model.img_size)
    flops, flops_by_kind = count_flops(model, img_size, model.in_chans)
    model.to(device)
    params = sum(p.numel() for p in model.parameters())
    x = flow.randn(batch_size, model.in_chans, *img_size, device=device)
    y = flow.randint(0, model.num_classes, (batch_size,), device=device)
    criterion = nn.CrossEntropyLoss()
    result = {
        "model": model_cfg if isinstance(model_cfg, str) else model.config, "batch_size": batch_size,
        "img_size": list(img_size), "device": device, "amp": amp, "params": params, "flops_per_image": flops,
        "flops_by_kind": flops_by_kind, "steps": steps, "warmup": warmup, "oneflow": flow.__version__,
        "python": platform.python_version(), "threads": _threads(), "modes": {},
    }
    rss_before = peak_rss_mb()
    for mode in modes:
        kind, how = mode.split("-")
        model.train(kind == "train")
        if kind == "train":
            opt = flow.optim.AdamW(clip_param_groups(model, 0.05, clip_grad=1.0), lr=1e-4)
            if how == "graph":
                graph = TrainGraph(model, criterion, opt, amp=amp)
                step = lambda: graph(x, y)  # noqa: E731
            else:
                def step():
                    with flow.autocast("cuda", enabled=amp) if amp else _null():
                        loss = criterion(model(x), y)
                    loss.backward()
                    for g in opt.param_groups:
                        flow.nn.utils.clip_grad_norm_(g.parameters, 1.0)
                    opt.step()
                    opt.zero_grad()
        else:
            if how == "graph":
                graph = EvalGraph(model, amp=amp)
                step = lambda: graph(x)  # noqa: E731
            else:
                def step():
                    with flow.no_grad():
                        model(x)
        first, times = _timed(step, warmup, steps)
        mean = sum(times) / len(times)
        entry = {"images_per_s": batch_size / mean, "step_ms": mean * 1000, "step_ms_min": min(times) * 1000,
                 "first_call_s": first, "peak_rss_mb": peak_rss_mb()}
        if how == "graph":
            entry["compile_s"] = first  # the graph's first call: compilation plus one step
        result["modes"][mode] = entry
    result["peak_rss_mb_before_modes"] = rss_before
    if profile:
        result["profile"] = profile_forward(model, x, repeat=steps)
    return result


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _threads():
    import os

    return int(os.environ.get("OMP_NUM_THREADS", 0)) or os.cpu_count()


# The kinds of leaf module the profile groups time by; anything else falls into its class name.
_KINDS = {nn.LayerNorm: "LayerNorm", nn.BatchNorm2d: "BatchNorm2d", nn.Linear: "Linear", nn.Conv2d: "Conv2d",
          nn.GELU: "GELU", PoSGU: "PoSGU (token mixing, gate)", SGU: "SGU (dense mixing, gate)"}


def profile_forward(model, x, repeat=3):
    """Eager forward time by module kind (ms per forward and share), timed with synchronising hooks around
    the LayerNorm/BatchNorm/Linear/Conv2d/GELU leaves and the gating units; the rest (window partition,
    shifts, reshapes, residual adds, pooling) is reported as ``other``."""
    totals = defaultdict(float)
    starts = {}

    def pre(m, inputs):
        sync()
        starts[id(m)] = time.perf_counter()

    def post(m, inputs, out):
        sync()
        totals[_kind(m)] += time.perf_counter() - starts.pop(id(m))

    named = [(n, m) for n, m in model.named_modules() if _kind(m) is not None]
    outer = [n for n, _ in named]
    # time a module only if no timed module contains it (an SGU's own LayerNorm and Linear count as SGU)
    timed = [m for n, m in named if not any(n != o and n.startswith(o + ".") for o in outer)]
    for m in timed:
        m.register_forward_pre_hook(pre)
        m.register_forward_hook(post)
    model.eval()
    try:
        with flow.no_grad():
            model(x)  # warm-up
            totals.clear()
            sync()
            start = time.perf_counter()
            for _ in range(repeat):
                model(x)
            sync()
            wall = (time.perf_counter() - start) / repeat
    finally:
        _clear_hooks(model)
    rows = {k: v / repeat * 1000 for k, v in totals.items()}
    rows["other"] = max(wall * 1000 - sum(rows.values()), 0.0)
    return {"forward_ms": wall * 1000,
            "by_kind_ms": dict(sorted(rows.items(), key=lambda kv: -kv[1])),
            "note": "eager forward (eval mode), hooks synchronise around every timed module"}


def _kind(m):
    for cls, name in _KINDS.items():
        if isinstance(m, cls):
            return name
    return None


def format_table(result):
    """A readable table of a :func:`run_benchmark` result."""
    name = result["model"] if isinstance(result["model"], str) else "custom"
    flops = result["flops_per_image"]
    flops = f"{flops / 1e9:.2f} GFLOPs" if flops >= 1e8 else f"{flops / 1e6:.1f} MFLOPs"
    lines = [f"{name}: {result['params']:,} parameters, {flops}/image "
             f"({result['img_size'][0]}x{result['img_size'][1]}), batch {result['batch_size']}, {result['device']}, "
             f"oneflow {result['oneflow']}, {result['threads']} threads",
             f"{'mode':<12} {'img/s':>9} {'step ms':>9} {'compile s':>10} {'peak RSS MB':>12}"]
    for mode, r in result["modes"].items():
        compile_s = f"{r['compile_s']:.1f}" if "compile_s" in r else "-"
        lines.append(f"{mode:<12} {r['images_per_s']:>9.2f} {r['step_ms']:>9.0f} {compile_s:>10} "
                     f"{r['peak_rss_mb']:>12.0f}")
    if "profile" in result:
        p = result["profile"]
        lines.append(f"eager forward by module kind ({p['forward_ms']:.0f} ms per forward):")
        for kind, ms in p["by_kind_ms"].items():
            lines.append(f"  {kind:<28} {ms:>9.1f} ms {100 * ms / p['forward_ms']:>6.1f}%")
    return "\n".join(lines)


def write_json(result, path):
    with open(path, "w") as f:
        json.dump(result, f, indent=2, default=str)
