"""The benchmark's output: a readable table of a result (:func:`format_table`) and the JSON file."""
import json
import os

from ..engine.mfu import describe_peak


def _fmt_flops(flops):
    return f"{flops / 1e9:.2f} GFLOPs" if flops >= 1e8 else f"{flops / 1e6:.2f} MFLOPs"


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def _layout(result):
    """``, 2 data-parallel ranks (...)`` or the tensor/pipeline layout, empty for one process."""
    ranks = result.get("ranks", 1)
    if ranks <= 1:
        return ""
    lay = result.get("layout") or {"data_parallel": ranks, "tensor_parallel": 1, "pipeline_parallel": 1}
    if lay["tensor_parallel"] == 1 and lay["pipeline_parallel"] == 1:
        return f", {ranks} data-parallel ranks (img/s global, memory of rank 0)"
    mode = f" ({lay['tensor_parallel_mode']})" if lay["tensor_parallel"] > 1 and lay.get("tensor_parallel_mode") else ""
    return (f", {ranks} ranks: data_parallel {lay['data_parallel']} x tensor_parallel {lay['tensor_parallel']}{mode} x "
            f"pipeline_parallel {lay['pipeline_parallel']} (img/s global, memory of rank 0)")


def _per_rank(result):
    """Lines on each rank's share: forward FLOPs per image, a train step's FLOPs, what the train graph moves."""
    if result.get("ranks", 1) <= 1 or "flops_per_image_per_rank" not in result:
        return []
    kinds = ", ".join(f"{k} {_fmt_flops(v)}" for k, v in result["flops_by_kind_per_rank"].items())
    lines = [f"per rank: {_fmt_flops(result['flops_per_image_per_rank'])}/image forward ({kinds}); train step "
             f"{_fmt_flops(result['train_step_flops_per_rank'])} (3 x forward x {result['images_per_rank']} images)"]
    graph = result["modes"].get("train-graph", {})
    if "boxing_bytes_per_rank" in graph:
        blocks = [v for k, v in graph["boxing_bytes_per_rank_by_block"].items() if k != "other"]
        per_block = (f"; blocks {len(blocks)}: {min(blocks) / 1e6:.2f} to {max(blocks) / 1e6:.2f} MB each, "
                     f"{sum(blocks) / 1e6:.2f} MB in all") if blocks else ""
        lines.append(f"train graph: each rank sends {graph['boxing_bytes_per_rank'] / 1e6:.2f} MB per step for the "
                     f"compiled plan's SBP conversions{per_block} (per block in the JSON)")
    return lines


def _train_step(result):
    """``train step: AdamW lr ... (from the config)`` of the first train mode, or None."""
    for r in result["modes"].values():
        s = r.get("train_step")
        if s:
            wd = ", ".join(f"{w:g}" for w in s["weight_decay"])
            return (f"train step (built from the config as the trainer does): {s['optimizer']} lr {s['lr']:.3g}, "
                    f"weight decay {wd} (per group), eps {s['eps']:g}, clip {s['clip_grad']:g} ({s['clip_scope']}), "
                    f"{result.get('grad_accum_steps', 1)} micro-batch(es) per update")
    return None


def format_table(result):
    """A readable table of a :func:`~oneflow_posmlp.bench.runner.run_benchmark` result."""
    lines = [f"{result['model']}: {result['params']:,} parameters, {_fmt_flops(result['flops_per_image'])}/image "
             f"(2 x MACs), {result['img_size'][0]}x{result['img_size'][1]}, batch {result['batch_size']}, "
             f"{result['device']}{' amp' if result['amp'] else ''}, oneflow {result['oneflow']}, "
             f"{result['threads']} threads" + _layout(result),
             "env: " + ", ".join(f"{k}={v if v is not None else '(unset)'}" for k, v in result.get("env", {}).items())]
    train_step = _train_step(result)
    if train_step:
        lines.append(train_step)
    peak = result.get("peak")
    if peak:
        lines.append(describe_peak(peak) + f"; MFU = img/s x FLOPs per image (train: 3x the forward) / "
                     f"{result.get('ranks', 1)} device(s) / peak; MFU(cpu) from the fastest step's CPU seconds")
    lines += _per_rank(result)
    lines += [f"step = wall time from launch to last kernel, mean of {result['steps']} timed steps after "
              f"{result['warmup']} warm-up; compile = a graph's first call (compile + 1 step); memory after each "
              f"mode (peak = process high-water mark)",
              f"{'mode':<12} {'img/s':>9} {'step ms':>9} {'min ms':>9} {'cpu ms':>9} {'GFLOP/s/dev':>11} {'MFU':>6} "
              f"{'MFU(cpu)':>8} {'compile s':>10} {'peak RSS MB':>12} {'peak +MB':>9} {'RSS delta MB':>13}"]
    for mode, r in result["modes"].items():
        achieved = r.get("achieved_flops_per_device")
        lines.append(f"{mode:<12} {r['images_per_s']:>9.2f} {r['step_ms']:>9.0f} {r['step_ms_min']:>9.0f} "
                     f"{_fmt(r.get('cpu_ms_min'), '.0f'):>9} {_fmt(achieved and achieved / 1e9, '.1f'):>11} "
                     f"{_fmt(r.get('mfu'), '.3f'):>6} {_fmt(r.get('mfu_cpu_time'), '.3f'):>8} "
                     f"{_fmt(r.get('compile_s'), '.1f'):>10} {r['peak_rss_mb']:>12.0f} "
                     f"{r['peak_rss_growth_mb']:>9.0f} {_fmt(r['rss_delta_mb'], '.0f'):>13}"
                     + (f"  gpu {_fmt(r.get('gpu_used_mb'), '.0f')} MB" if result["device"] == "cuda" else ""))
    if "profile" in result:
        p = result["profile"]
        lines.append(f"eager forward (eval, batch {p['batch_size']}) by kind: {p['forward_ms']:.0f} ms per forward "
                     f"unhooked, {p['hooked_forward_ms']:.0f} ms hooked (mean of {p['repeat']}):")
        for kind, ms in p["by_kind_ms"].items():
            lines.append(f"  {kind:<44} {ms:>9.1f} ms {100 * ms / p['hooked_forward_ms']:>6.1f}%")
    if "train_profile" in result:
        lines += format_train_profile(result["train_profile"])
    return "\n".join(lines)


def format_train_profile(p):
    """The lines of a train-step profile (``bench.profile.profile_train_step``)."""
    total = p["hooked_step_ms"]
    lines = [f"eager train step (batch {p['batch_size']} per rank) by kind, {p['clock']} clock: {p['step_ms']:.0f} ms "
             f"per step unhooked, {total:.0f} ms hooked (mean of {p['repeat']}); forward {p['forward_ms']:.0f} ms, "
             f"backward {p['backward_ms']:.0f} ms:",
             f"  {'kind':<44} {'forward ms':>11} {'backward ms':>12} {'% of step':>10}"]
    for kind, v in p["by_kind_ms"].items():
        lines.append(f"  {kind:<44} {v['forward']:>11.1f} {v['backward']:>12.1f} "
                     f"{100 * (v['forward'] + v['backward']) / total:>9.1f}%")
    for phase, ms in p["phases_ms"].items():
        lines.append(f"  {phase:<44} {ms:>24.1f} {100 * ms / total:>9.1f}%")
    if p.get("allreduce_ms") is not None:
        lines.append(f"  gradient all-reduce alone (inside the backward above) {p['allreduce_ms']:>15.1f} ms")
    return lines


def write_json(result, path):
    """Write ``result`` as indented JSON (creating the directory)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2, default=str)
