"""First-run guidance: one warning at start when the per-device micro-batch is large for the model.

``train.batch_size`` is the global batch (the recipe's learning rate scales with it: ``train.batch_size /
train.lr_base_batch``), split as

    global batch = micro-batch per device x data-parallel ranks x train.grad_accum_steps

so a shipped config (global batch 512) run on one GPU computes micro-batches of 512 images. The activations a
training forward keeps for the backward grow with the micro-batch; :data:`ACTIVATION_BYTES_PER_IMAGE` holds
them per image for the shipped model sizes, measured on CPU in float32 (:func:`measure_activation_bytes`:
the largest growth of a forward's peak resident memory with autograd on between two batch sizes, in fresh
processes)::

    python tools/measure_activations.py configs/posmlp_t.yaml configs/posmlp_s.yaml configs/posmlp_b.yaml \\
        configs/posmlp_t_384_ft.yaml

When micro-batch x bytes per image exceeds :data:`BUDGET` of the device's memory (a CUDA device's, or the
host's memory shared by its ranks on CPU), :func:`micro_batch_warning` names ``train.grad_accum_steps`` that
fits and the global-batch rule. Models without a measured figure (another architecture, activation
checkpointing on) get no warning.
"""
import os
import subprocess
import sys

# float32 bytes a training forward keeps per image, by (embed_dims, depths, img_size): measured on CPU with the
# module docstring's command (2026-12-04, this project's shared 2-core machine; the spans' figures in MiB after
# each line); the names are the shipped configs'
ACTIVATION_BYTES_PER_IMAGE = {
    ((96, 192, 384, 768), (2, 2, 18, 2), (224, 224)): ("posmlp_t", 199784448),  # 191, 176, 172
    ((128, 256, 512, 1024), (2, 2, 18, 2), (224, 224)): ("posmlp_s", 240906240),  # 208, 230, 226
    ((192, 384, 768, 1536), (2, 2, 18, 2), (224, 224)): ("posmlp_b", 399123456),  # 361, 381, 330
    ((96, 192, 384, 768), (2, 2, 18, 2), (384, 384)): ("posmlp_t_384", 570437632),  # 544, 482, 355
}
BUDGET = 0.75  # of the device's memory for activations (the rest: weights, gradients, AdamW moments, workspace)
PROBE_SPANS = ((1, 3), (2, 6), (4, 8))  # pairs of batch sizes whose peak memory is compared; the largest growth


def architecture(model_cfg):
    """The key of :data:`ACTIVATION_BYTES_PER_IMAGE`: what the activations depend on besides the batch."""
    size = model_cfg["img_size"]
    size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    return (tuple(model_cfg["embed_dims"]), tuple(model_cfg["depths"]), size)


def bytes_per_image(model_cfg):
    """The measured activation bytes per image of ``model_cfg``'s architecture, or None."""
    entry = ACTIVATION_BYTES_PER_IMAGE.get(architecture(model_cfg))
    return entry[1] if entry else None


def micro_batch(train_cfg, data_parallel, accum=None):
    accum = train_cfg["grad_accum_steps"] if accum is None else accum
    return train_cfg["batch_size"] // max(data_parallel * accum, 1)


def fitting_accum(train_cfg, data_parallel, per_image, budget_bytes):
    """The smallest ``train.grad_accum_steps`` (dividing the global batch over the ranks) whose micro-batch's
    activations fit ``budget_bytes``, or None."""
    per_rank = train_cfg["batch_size"] // max(data_parallel, 1)
    for accum in range(train_cfg["grad_accum_steps"], per_rank + 1):
        if per_rank % accum == 0 and per_rank // accum * per_image <= budget_bytes:
            return accum
    return None


def micro_batch_warning(cfg, data_parallel, device_bytes, device_name):
    """One warning line when the per-device micro-batch's activations exceed :data:`BUDGET` of ``device_bytes``,
    else None."""
    t, per_image = cfg["train"], bytes_per_image(cfg["model"])
    if per_image is None or cfg["dist"].get("activation_checkpointing") or not device_bytes:
        return None
    micro, budget = micro_batch(t, data_parallel), BUDGET * device_bytes
    if micro * per_image <= budget:
        return None
    accum = fitting_accum(t, data_parallel, per_image, budget)
    name = ACTIVATION_BYTES_PER_IMAGE[architecture(cfg["model"])][0]
    fix = (f"set train.grad_accum_steps={accum} (micro-batch {micro_batch(t, data_parallel, accum)}, about "
           f"{_gb(micro_batch(t, data_parallel, accum) * per_image)})" if accum else
           "even one image per micro-batch does not fit: use more data-parallel ranks or dist.activation_checkpointing")
    return (f"train.batch_size {t['batch_size']} is the global batch (micro-batch per device x {data_parallel} "
            f"data-parallel rank(s) x train.grad_accum_steps {t['grad_accum_steps']}): each device computes "
            f"micro-batches of {micro} images, whose activations take about {_gb(micro * per_image)} ({name}: "
            f"{per_image / 2 ** 20:,.0f} MiB per image in float32, measured), more than {BUDGET:.0%} of the "
            f"{_gb(device_bytes)} of {device_name}; {fix}. That keeps the global batch and the recipe's learning "
            f"rate (scaled by train.batch_size / train.lr_base_batch)")


def _gb(n):
    return f"{n / 2 ** 30:,.1f} GiB"


def device_memory(device, local_ranks=1):
    """``(bytes, name)`` of this rank's device: a CUDA device's memory, or on CPU the host's physical memory
    shared by the ``local_ranks`` processes of the node."""
    if device == "cuda":
        import oneflow as flow

        props = flow.cuda.get_device_properties(flow.cuda.current_device())
        return props.total_memory, props.name
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None, "cpu"
    return total // max(local_ranks, 1), f"this host's memory ({max(local_ranks, 1)} rank(s) on it)"


def warn_if_large_micro_batch(cfg, ctx, warn):
    """The trainer's start-up check: ``warn(line)`` once when the micro-batch is large (:func:`micro_batch_warning`)."""
    import oneflow as flow

    local = flow.env.get_world_size() // max(flow.env.get_node_size(), 1)
    line = micro_batch_warning(cfg, ctx.data_parallel, *device_memory(ctx.device, local))
    if line:
        warn(line)
    return line


# ----------------------------------------------------------------- measuring (the module's command)
_PROBE = """
import resource, sys
import oneflow_posmlp
import oneflow as flow
from oneflow_posmlp.config import load_config
from oneflow_posmlp.models import build_model
cfg = load_config(sys.argv[1])["model"]
model = build_model(dict(cfg, drop_rate=0.0, drop_path_rate=0.0)).train()
size = cfg["img_size"] if isinstance(cfg["img_size"], (list, tuple)) else [cfg["img_size"]] * 2
x = flow.randn(int(sys.argv[2]), 3, *size)
loss = model(x).sum()
loss.numpy()  # the forward has run; its saved activations are alive until the backward
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def _peak_rss(config, batch):
    env = dict(os.environ, GLOG_minloglevel="3", ONEFLOW_VM_COMPUTE_ON_WORKER_THREAD="0")
    out = subprocess.run([sys.executable, "-c", _PROBE, config, str(batch)], capture_output=True, text=True,
                         env=env, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def measure_activation_bytes(config, spans=PROBE_SPANS):
    """``(bytes per image, [per span])``: the float32 bytes per image a training forward of ``config``'s model
    keeps, as the growth of the peak resident memory of a fresh process running the forward with autograd on (no
    backward) between two batch sizes. The spans disagree by up to a third (OneFlow's CPU allocator reuses
    blocks differently at each size), so the largest is taken: the warning errs towards warning."""
    per_span = [(_peak_rss(config, hi) - _peak_rss(config, lo)) / (hi - lo) for lo, hi in spans]
    return max(per_span), per_span


def main(argv=None):
    """``tools/measure_activations.py CONFIG...``: one table line per config."""
    from ..config import load_config

    for config in argv if argv is not None else sys.argv[1:]:
        model = load_config(config)["model"]
        per_image, per_span = measure_activation_bytes(config)
        spans = ", ".join(f"{lo}-{hi}: {b / 2 ** 20:.0f}" for (lo, hi), b in zip(PROBE_SPANS, per_span))
        print(f"    {architecture(model)!r}: ({model.get('name')!r}, {per_image:.0f}),  "
              f"# {per_image / 2 ** 20:.1f} MiB per image (batches {spans} MiB), {config}")

