"""engine/mfu.py: MFU from the FLOP counter and a device's peak (measured on CPU, datasheet on CUDA)."""
import math

import oneflow as flow
import pytest

from oneflow_posmlp.engine import mfu as M
from oneflow_posmlp.models import build_model
from oneflow_posmlp.models.flops import count_flops


def test_mfu_definition():
    """posmlp_t's example of docs/benchmark.md: 2.6 img/s x 3 x 10.11 GFLOPs over 2 cores of 75 GFLOP/s."""
    per_device, value = M.mfu(2.6, 10.11e9, 2, 75e9, train=True)
    assert per_device == pytest.approx(2.6 * 3 * 10.11e9 / 2) and value == pytest.approx(per_device / 75e9)
    assert M.mfu(7.12, 10.11e9, 2, 75e9, train=False)[1] == pytest.approx(7.12 * 10.11e9 / 2 / 75e9)
    assert M.mfu(1.0, 1e9, 1, None)[1] is None


# CUDA device names as OneFlow's get_device_name (cudaGetDeviceProperties) reports them
GPU_NAMES = [
    ("NVIDIA A100-SXM4-80GB", "A100"), ("NVIDIA A100-PCIE-40GB", "A100"), ("NVIDIA A100 80GB PCIe", "A100"),
    ("NVIDIA A800-SXM4-80GB", "A800"), ("NVIDIA A800 80GB PCIe", "A800"), ("NVIDIA A10", "A10"),
    ("NVIDIA A10G", "A10G"), ("NVIDIA A30", "A30"), ("NVIDIA A40", "A40"), ("NVIDIA L4", "L4"),
    ("NVIDIA L40", "L40"), ("NVIDIA L40S", "L40S"), ("NVIDIA H100 80GB HBM3", "H100 SXM"),
    ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H100 NVL", "H100 NVL"), ("NVIDIA H800", "H800 SXM"),
    ("NVIDIA H800 PCIe", "H800 PCIe"), ("NVIDIA H200", "H200 SXM"), ("NVIDIA H200 NVL", "H200 NVL"),
    ("NVIDIA H20", "H20"), ("Tesla V100-SXM2-32GB", "V100 SXM2"), ("Tesla V100-PCIE-16GB", "V100 PCIe"),
    ("Tesla V100S-PCIE-32GB", "V100S PCIe"), ("Tesla T4", "T4"), ("NVIDIA GeForce RTX 3080", "RTX 3080"),
    ("NVIDIA GeForce RTX 3090", "RTX 3090"), ("NVIDIA GeForce RTX 4080", "RTX 4080"),
    ("NVIDIA GeForce RTX 4090", "RTX 4090"),
    ("NVIDIA GeForce RTX 3090 Ti", None), ("NVIDIA GeForce RTX 4090 D", None), ("NVIDIA B200", None),
]


@pytest.mark.parametrize("name, key", GPU_NAMES)
def test_gpu_names_map_to_the_datasheet_table(name, key):
    assert M.gpu_model(name) == key


def test_gpu_peak_by_dtype(monkeypatch):
    monkeypatch.delenv("ONEFLOW_EP_CUDA_ENABLE_TF32_EXECUTION", raising=False)
    assert M.gpu_peak_flops("NVIDIA A100-SXM4-80GB", amp=False) == (156e12, "tf32", "A100")  # OneFlow: TF32 on
    assert M.gpu_peak_flops("NVIDIA A100-SXM4-80GB", amp=True) == (312e12, "fp16", "A100")
    assert M.gpu_peak_flops("Tesla V100-SXM2-16GB", amp=False) == (15.7e12, "fp32", "V100 SXM2")  # no TF32
    monkeypatch.setenv("ONEFLOW_EP_CUDA_ENABLE_TF32_EXECUTION", "0")
    assert M.gpu_peak_flops("NVIDIA H100 PCIe", amp=False) == (51e12, "fp32", "H100 PCIe")
    assert M.gpu_peak_flops("Some New GPU", amp=False) == (None, "fp32", None)


def test_every_card_of_the_table_has_its_own_dense_peaks():
    assert {key for _, key in GPU_NAMES if key} == set(M.GPU_PEAK_TFLOPS)  # every row is reachable by a name
    for key, peaks in M.GPU_PEAK_TFLOPS.items():
        assert peaks["fp32"] > 0 and peaks["fp16"] >= peaks["fp32"], key
        assert peaks.get("bf16", peaks["fp16"]) == peaks["fp16"] and peaks.get("tf32", 0) <= peaks["fp16"], key
    sxm, pcie, nvl = (M.GPU_PEAK_TFLOPS[f"H100 {k}"]["fp16"] for k in ("SXM", "PCIe", "NVL"))
    assert pcie < nvl < sxm  # the PCIe and NVL cards have their own peaks
    assert M.GPU_PEAK_TFLOPS["RTX 4090"]["fp16"] == 2 * M.GPU_PEAK_TFLOPS["RTX 4090"]["fp32"]  # fp32 accumulate


@pytest.mark.parametrize("name, key", [n for n in GPU_NAMES if n[1]])
def test_mfu_lookup_of_each_card_with_cuda_reported(name, key, monkeypatch):
    """What the trainer's MFU does on a CUDA rank (device_peak("cuda")), CUDA and the device's name reported."""
    from types import SimpleNamespace

    monkeypatch.setattr(flow.cuda, "is_available", lambda: True)
    monkeypatch.setattr(flow.cuda, "get_device_properties", lambda device=None: SimpleNamespace(name=name))
    monkeypatch.delenv("ONEFLOW_EP_CUDA_ENABLE_TF32_EXECUTION", raising=False)
    for amp, dtype in ((True, "fp16"), (False, "tf32" if "tf32" in M.GPU_PEAK_TFLOPS[key] else "fp32")):
        peak = M.device_peak("cuda", amp=amp)
        assert peak["device"] == name and peak["dtype"] == dtype
        assert peak["peak_flops"] == M.GPU_PEAK_TFLOPS[key][dtype] * 1e12
        assert peak["source"] == f"{key} datasheet, dense {dtype}"
        assert 0 < M.mfu(100.0, 10e9, 1, peak["peak_flops"])[1] < 1


def test_cpu_peak_is_measured_once_per_process():
    M._cpu_peak.pop(256, None)
    first = M.cpu_peak_flops(size=256, repeat=1)
    assert first > 1e8 and M.cpu_peak_flops(size=256) == first  # cached
    peak = M.device_peak("cpu")
    assert peak["peak_flops"] > 1e9 and "measured" in peak["source"] and "GFLOP/s" in M.describe_peak(peak)
    unknown = {"peak_flops": None, "source": "unknown device 'X'"}
    assert M.describe_peak(unknown) == "peak: unknown device 'X'"


def test_train_mfu_uses_the_flop_counter():
    tiny = {"img_size": 32, "embed_dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "win_size": [4, 4, 2, 1],
            "gamma": [2, 4, 8, 16], "num_classes": 5}
    model = build_model(tiny)

    class Ctx:
        world, device = 2, "cpu"

    meter = M.TrainMfu(model, Ctx())
    assert meter.flops_per_image == count_flops(model)[0] == 332416
    value = meter.of(100.0)
    assert value == pytest.approx(100.0 * 3 * 332416 / 2 / meter.peak["peak_flops"])
    assert not math.isnan(value)
