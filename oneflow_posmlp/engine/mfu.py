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

# Dense peak TFLOP/s per dtype, from NVIDIA's datasheets (the figures "with sparsity" are 2x these):
# V100: "NVIDIA Tesla V100 GPU Accelerator" datasheet (SXM2 15.7 fp32 / 125 tensor; PCIe 14 / 112);
# A100 40 GB and 80 GB (SXM and PCIe alike): "NVIDIA A100 Tensor Core GPU" datasheet;
# A10: "NVIDIA A10 Tensor Core GPU" datasheet; A30: "NVIDIA A30 Tensor Core GPU" datasheet;
# L4: "NVIDIA L4 Tensor Core GPU" datasheet; L40S: "NVIDIA L40S GPU" datasheet;
# H100 SXM5 and PCIe: "NVIDIA H100 Tensor Core GPU" datasheet.
GPU_PEAK_TFLOPS = {
    "V100 SXM2": {"fp32": 15.7, "fp16": 125.0},
    "V100 PCIe": {"fp32": 14.0, "fp16": 112.0},
    "A100": {"fp32": 19.5, "tf32": 156.0, "fp16": 312.0, "bf16": 312.0},
    "A10": {"fp32": 31.2, "tf32": 62.5, "fp16": 125.0, "bf16": 125.0},
    "A30": {"fp32": 10.3, "tf32": 82.0, "fp16": 165.0, "bf16": 165.0},
    "L4": {"fp32": 30.3, "tf32": 60.0, "fp16": 121.0, "bf16": 121.0},
    "L40S": {"fp32": 91.6, "tf32": 183.0, "fp16": 362.05, "bf16": 362.05},
    "H100 SXM": {"fp32": 67.0, "tf32": 494.7, "fp16": 989.4, "bf16": 989.4},
    "H100 PCIe": {"fp32": 51.0, "tf32": 378.0, "fp16": 756.0, "bf16": 756.0},
}

_cpu_peak = {}


def gpu_model(device_name):
    """The :data:`GPU_PEAK_TFLOPS` key of a CUDA device name (``"NVIDIA A100-SXM4-80GB"`` -> ``"A100"``), or
    None for a device not in the table."""
    name = device_name.upper().replace("-", " ")
    words = set(name.split())
    if "H100" in name:
        return "H100 PCIe" if "PCIE" in words else "H100 SXM"
    if "V100" in name:
        return "V100 PCIe" if "PCIE" in words else "V100 SXM2"
    for key in ("A100", "A30", "A10", "L40S", "L4"):  # A100 before A10, L40S before L4
        if key in words or any(w.startswith(key) and not w[len(key):len(key) + 1].isalnum() for w in words):
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
