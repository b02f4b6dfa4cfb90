"""Model FLOPs utilisation (MFU): the model's arithmetic per second per device over the device's peak.

    MFU = images/s x FLOPs per image x (3 for a train step, 1 for eval) / devices / peak FLOP/s per device

FLOPs per image are the forward's, counted by :func:`oneflow_posmlp.models.flops.count_flops` (2 x the
multiply-adds of convolutions, linear layers and token mixing); a train step is 3x the forward (the backward
computes two products per forward product: input and weight gradients), the convention of large-scale
training reports (PaLM's appendix B, Megatron-LM). Recomputation (activation checkpointing) is not counted:
MFU counts the model's FLOPs, not the hardware's. ``devices`` is the number of processes (ranks): on CPU
OneFlow 0.9.0 computes on one core per process, so a device is a core.

The peak:

* **CPU**: measured, one core's sgemm: the best of ``repeat`` ``flow.matmul`` of two ``2048 x 2048`` float32
  matrices (OneFlow's own OpenBLAS) in CPU seconds, cached per process (:func:`cpu_peak_flops`). It is what this framework
  can reach on this core, so an MFU of 1 is a model that runs at its own GEMM rate.
* **CUDA**: the datasheet's dense (no sparsity) peak of the device for the dtype in use
  (:data:`GPU_PEAK_TFLOPS`, :func:`gpu_peak_flops`): ``fp16`` with AMP (autocast float16); ``tf32`` for fp32
  on Ampere and newer where OneFlow runs fp32 matmuls on TF32 tensor cores (its default;
  ``ONEFLOW_EP_CUDA_ENABLE_TF32_EXECUTION=0`` turns it off, then ``fp32``). An unknown device has no peak:
  MFU is not reported and :func:`describe_peak` says why.
"""
import os
import time

import oneflow as flow

TRAIN_FACTOR = 3  # a train step's FLOPs over the forward's
CPU_SGEMM_SIZE = 2048

# Dense (no sparsity) peak TFLOP/s per dtype and per GPU; datasheets list the "with sparsity" tensor figures at 2x.
# "fp16"/"bf16": tensor cores with float32 accumulation (OneFlow's AMP matmuls); on GeForce cards this is half
# the rate with float16 accumulation. Sources, by key:
#   V100 SXM2 / V100 PCIe / V100S PCIe: "NVIDIA Tesla V100 GPU Accelerator" and "NVIDIA V100S" datasheets
#   T4: "NVIDIA T4 Tensor Core GPU" datasheet (65 TFLOPS mixed precision)
#   A100, A800: "NVIDIA A100 Tensor Core GPU" and "NVIDIA A800 Tensor Core GPU" datasheets (40/80 GB, SXM and PCIe alike)
#   A10, A30, A40: "NVIDIA A10 / A30 / A40" datasheets
#   A10G (AWS G5 only, no NVIDIA datasheet): the figures Baseten's "NVIDIA A10 vs A10G for ML model inference"
#     compares (31.52 fp32, 35 tf32, 70 fp16 tensor, dense); the least certain row
#   L4, L40, L40S: "NVIDIA L4 / L40 / L40S" datasheets
#   H100 SXM, H100 PCIe, H100 NVL: "NVIDIA H100 Tensor Core GPU" datasheet, one column each (NVL: the 94 GB, 400 W
#     card, per GPU; the PCIe and NVL cards run lower clocks and fewer SMs than SXM)
#   H800 SXM / H800 PCIe: "NVIDIA H800 Tensor Core GPU" datasheet (the H100's tensor rates, less FP64 and NVLink)
#   H200 SXM / H200 NVL: "NVIDIA H200 Tensor Core GPU" datasheet
#   H20: NVIDIA's HGX H20 product brief (148 fp16/bf16, 74 tf32, 44 fp32, dense)
#   RTX 3080, RTX 3090: "NVIDIA Ampere GA102 GPU Architecture" whitepaper, appendix table
#   RTX 4080, RTX 4090: "NVIDIA Ada GPU Architecture" whitepaper, appendix table
# The OneFlow 0.9.0 wheel has no kernels for Hopper (H100/H800/H200/H20: compute capability 9.0, see
# parallel/devices.py): their rows serve the benchmark reports of other builds and the MFU arithmetic.
GPU_PEAK_TFLOPS = {
    "V100 SXM2": {"fp32": 15.7, "fp16": 125.0},
    "V100 PCIe": {"fp32": 14.0, "fp16": 112.0},
    "V100S PCIe": {"fp32": 16.4, "fp16": 130.0},
    "T4": {"fp32": 8.1, "fp16": 65.0},
    "A100": {"fp32": 19.5, "tf32": 156.0, "fp16": 312.0, "bf16": 312.0},
    "A800": {"fp32": 19.5, "tf32": 156.0, "fp16": 312.0, "bf16": 312.0},
    "A10": {"fp32": 31.2, "tf32": 62.5, "fp16": 125.0, "bf16": 125.0},
    "A10G": {"fp32": 31.52, "tf32": 35.0, "fp16": 70.0, "bf16": 70.0},
    "A30": {"fp32": 10.3, "tf32": 82.0, "fp16": 165.0, "bf16": 165.0},
    "A40": {"fp32": 37.4, "tf32": 74.8, "fp16": 149.7, "bf16": 149.7},
    "L4": {"fp32": 30.3, "tf32": 60.0, "fp16": 121.0, "bf16": 121.0},
    "L40": {"fp32": 90.5, "tf32": 90.5, "fp16": 181.05, "bf16": 181.05},
    "L40S": {"fp32": 91.6, "tf32": 183.0, "fp16": 362.05, "bf16": 362.05},
    "H100 SXM": {"fp32": 67.0, "tf32": 494.7, "fp16": 989.4, "bf16": 989.4},
    "H100 PCIe": {"fp32": 51.0, "tf32": 378.0, "fp16": 756.0, "bf16": 756.0},
    "H100 NVL": {"fp32": 60.0, "tf32": 417.5, "fp16": 835.5, "bf16": 835.5},
    "H800 SXM": {"fp32": 67.0, "tf32": 494.7, "fp16": 989.4, "bf16": 989.4},
    "H800 PCIe": {"fp32": 51.0, "tf32": 378.0, "fp16": 756.0, "bf16": 756.0},
    "H200 SXM": {"fp32": 67.0, "tf32": 494.7, "fp16": 989.4, "bf16": 989.4},
    "H200 NVL": {"fp32": 60.0, "tf32": 417.5, "fp16": 835.5, "bf16": 835.5},
    "H20": {"fp32": 44.0, "tf32": 74.0, "fp16": 148.0, "bf16": 148.0},
    "RTX 3080": {"fp32": 29.8, "tf32": 29.8, "fp16": 59.5, "bf16": 59.5},
    "RTX 3090": {"fp32": 35.6, "tf32": 35.6, "fp16": 71.0, "bf16": 71.0},
    "RTX 4080": {"fp32": 48.7, "tf32": 48.7, "fp16": 97.5, "bf16": 97.5},
    "RTX 4090": {"fp32": 82.6, "tf32": 82.6, "fp16": 165.2, "bf16": 165.2},
}

# CUDA device names -> table keys: the first rule whose words are all in the name (and none of its excluded
# words) wins; words are the name's, upper-cased, split at spaces and dashes ("NVIDIA A100-SXM4-80GB" -> A100, SXM4,
# 80GB). Variants with other clocks (RTX 3090 Ti, RTX 4090 D, RTX 4080 SUPER) are not in the table.
_NAME_RULES = (
    ("H100 NVL", {"H100", "NVL"}, ()), ("H100 PCIe", {"H100", "PCIE"}, ()), ("H100 SXM", {"H100"}, ()),
    ("H800 PCIe", {"H800", "PCIE"}, ()), ("H800 SXM", {"H800"}, ()),
    ("H200 NVL", {"H200", "NVL"}, ()), ("H200 SXM", {"H200"}, ()), ("H20", {"H20"}, ()),
    ("A100", {"A100"}, ()), ("A800", {"A800"}, ()), ("A10G", {"A10G"}, ()), ("A10", {"A10"}, ()),
    ("A30", {"A30"}, ()), ("A40", {"A40"}, ()), ("L40S", {"L40S"}, ()), ("L40", {"L40"}, ()), ("L4", {"L4"}, ()),
    ("V100S PCIe", {"V100S"}, ()), ("V100 PCIe", {"V100", "PCIE"}, ()), ("V100 SXM2", {"V100"}, ()),
    ("T4", {"T4"}, ()),
    ("RTX 3080", {"RTX", "3080"}, ("TI",)), ("RTX 3090", {"RTX", "3090"}, ("TI",)),
    ("RTX 4080", {"RTX", "4080"}, ("SUPER",)), ("RTX 4090", {"RTX", "4090"}, ("D",)),
)

_cpu_peak = {}


def gpu_model(device_name):
    """The :data:`GPU_PEAK_TFLOPS` key of a CUDA device name (``"NVIDIA A100-SXM4-80GB"`` -> ``"A100"``), or
    None for a device not in the table."""
    words = set(device_name.upper().replace("-", " ").split())
    for key, needed, excluded in _NAME_RULES:
        if needed <= words and not words.intersection(excluded):
            return key
    return None


def gpu_dtype(amp):
    """The tensor-core dtype a run's matmuls use: ``fp16`` (AMP), ``tf32`` (fp32 with OneFlow's TF32 switch on)
    or ``fp32``."""
    if amp:
        return "fp16"
    tf32 = os.environ.get("ONEFLOW_EP_CUDA_ENABLE_TF32_EXECUTION", "1").strip().lower()
    return "fp32" if tf32 in ("0", "false", "off", "no") else "tf32"


def gpu_peak_flops(device_name, amp):
    """``(peak FLOP/s or None, dtype, table key or None)`` for a CUDA device; ``tf32`` falls back to ``fp32`` on
    a device without TF32 (V100)."""
    key, dtype = gpu_model(device_name), gpu_dtype(amp)
    if key is None:
        return None, dtype, None
    peaks = GPU_PEAK_TFLOPS[key]
    if dtype not in peaks:
        dtype = "fp32"
    return peaks[dtype] * 1e12, dtype, key


def cpu_peak_flops(size=CPU_SGEMM_SIZE, repeat=3):
    """One core's float32 GEMM rate, FLOP/s: the best of ``repeat`` ``size^3`` ``flow.matmul`` after one
    warm-up, timed in this process's CPU seconds (so other jobs on a shared machine, which take wall time but
    not this process's CPU time, do not lower it; on an idle machine it equals the wall-clock rate), measured
    once per process (cached by size)."""
    if size not in _cpu_peak:
        a, b = flow.randn(size, size), flow.randn(size, size)
        flow.matmul(a, b).numpy()
        best = None
        for _ in range(repeat):
            start = time.process_time()
            flow.matmul(a, b).numpy()
            spent = time.process_time() - start
            best = spent if best is None else min(best, spent)
        _cpu_peak[size] = 2.0 * size ** 3 / max(best, 1e-9)
    return _cpu_peak[size]


def device_peak(device, amp=False):
    """``{"device", "peak_flops" (or None), "source", "dtype"}`` of this process's device (``"cpu"`` or ``"cuda"``)."""
    if device == "cuda":
        name = flow.cuda.get_device_name() if flow.cuda.is_available() else "(no CUDA device)"
        peak, dtype, key = gpu_peak_flops(name, amp)
        source = (f"{key} datasheet, dense {dtype}" if key else
                  f"unknown device {name!r}: no datasheet peak in oneflow_posmlp.engine.mfu.GPU_PEAK_TFLOPS, "
                  f"MFU not reported")
        return {"device": name, "peak_flops": peak, "dtype": dtype, "source": source}
    peak = cpu_peak_flops()
    return {"device": "cpu (one core)", "peak_flops": peak, "dtype": "fp32",
            "source": f"measured: best of 3 flow.matmul {CPU_SGEMM_SIZE}^3 float32 on one core, CPU seconds"}


def mfu(images_per_s, flops_per_image, devices, peak_flops, train=True):
    """``(achieved FLOP/s per device, MFU or None)``; ``train``: the step is 3x the forward's FLOPs."""
    per_device = images_per_s * flops_per_image * (TRAIN_FACTOR if train else 1) / max(devices, 1)
    return per_device, (per_device / peak_flops if peak_flops else None)


def describe_peak(peak):
    """One line: ``peak 93.2 GFLOP/s per device (measured: ...)``."""
    if peak["peak_flops"] is None:
        return f"peak: {peak['source']}"
    return f"peak {peak['peak_flops'] / 1e9:,.1f} GFLOP/s per device ({peak['source']})"


class TrainMfu:
    """The trainer's MFU: FLOPs per image counted once on the local model, the device's peak measured or
    looked up on the first :meth:`of` (on CPU a ~1 s sgemm probe, only where a log line needs it).

    ``TrainMfu(model, ctx, amp)`` before ``ctx.apply(model)``; ``of(images_per_s)`` -> MFU or None."""

    def __init__(self, model, ctx, amp=False):
        from ..models.flops import count_flops

        self.flops_per_image = count_flops(model)[0]
        self.devices = ctx.world
        self.device, self.amp = ctx.device, amp
        self.peak = None

    def of(self, images_per_s):
        if self.peak is None:
            self.peak = device_peak(self.device, self.amp)
        return mfu(images_per_s, self.flops_per_image, self.devices, self.peak["peak_flops"], train=True)[1]
