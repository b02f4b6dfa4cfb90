"""The rank's CUDA device under OneFlow 0.9.0 (oneflow_posmlp/parallel/devices.py) and the checks ParallelContext makes
before the first CUDA kernel, run with CUDA reported available (only OneFlow's questions are patched)."""
from types import SimpleNamespace

import oneflow as flow
import pytest

from oneflow_posmlp.parallel import LayoutError, ParallelContext
from oneflow_posmlp.parallel.devices import check_cuda_arch, check_cuda_devices, placement_device
from test_cuda_paths import A100, report_cuda

CUDA = {"device": "cuda", "data_parallel": 0, "tensor_parallel": 1, "pipeline_parallel": 1}


def test_placements_put_a_rank_on_its_index_within_the_node():
    # 2 nodes x 8 ranks: rank 11 is the 4th rank of node 1 -> cuda:3, whatever LOCAL_RANK says
    assert [placement_device(r, 16, 2) for r in (0, 7, 8, 11, 15)] == [0, 7, 0, 3, 7]
    assert placement_device(0, 1, 1) == 0


def test_every_rank_must_see_the_gpus_of_its_node():
    check_cuda_devices(rank=11, world=16, nodes=2, visible=8)  # all of the node's GPUs visible: fine
    check_cuda_devices(rank=0, world=1, nodes=1, visible=1)  # one rank bound to one GPU: fine
    check_cuda_devices(rank=1, world=2, nodes=2, visible=1)  # one rank per node, one GPU each: cuda:0, fine
    with pytest.raises(LayoutError, match=r"rank 3: OneFlow 0.9.0 places rank 3 on cuda:3 .* sees 1 CUDA device\(s\) "
                                          r"\(CUDA_VISIBLE_DEVICES=2\); give every process all the GPUs"):
        check_cuda_devices(rank=3, world=8, nodes=1, visible=1, environ={"CUDA_VISIBLE_DEVICES": "2"})
    with pytest.raises(LayoutError, match="sees no CUDA device"):
        check_cuda_devices(rank=0, world=1, nodes=1, visible=0)


@pytest.mark.parametrize("cc,runs", [((6, 0), True), ((7, 0), True), ((7, 5), True), ((8, 0), True), ((8, 6), True),
                                     ((8, 9), True), ((9, 0), False), ((10, 0), False), ((5, 2), False)])
def test_the_wheel_runs_on_the_architectures_it_has_machine_code_for(cc, runs):
    if runs:
        check_cuda_arch(cc)
    else:
        with pytest.raises(LayoutError, match="no PTX"):
            check_cuda_arch(cc, "NVIDIA H100 80GB HBM3")


def test_parallel_context_checks_the_gpu_before_its_first_kernel(monkeypatch):
    report_cuda(monkeypatch, count=2)
    ctx = ParallelContext(CUDA)  # one process on an A100: nothing to object to
    assert ctx.device == "cuda" and not ctx.distributed and ctx.placement is None
    report_cuda(monkeypatch, count=1, props=SimpleNamespace(**dict(vars(A100), name="NVIDIA H100 80GB HBM3", major=9)))
    with pytest.raises(LayoutError, match=r"NVIDIA H100 80GB HBM3 \(compute capability 9.0\) cannot run"):
        ParallelContext(CUDA)
    report_cuda(monkeypatch, count=0)
    with pytest.raises(LayoutError, match="OneFlow sees no CUDA device"):
        ParallelContext(CUDA)


def test_parallel_context_refuses_a_task_bound_to_one_gpu_among_several_ranks(monkeypatch):
    """8 ranks on one node, each bound to one GPU: rank 3's placement device cuda:3 is not there."""
    report_cuda(monkeypatch, count=1)
    monkeypatch.setattr(flow.env, "get_world_size", lambda: 8)
    monkeypatch.setattr(flow.env, "get_rank", lambda: 3)
    monkeypatch.setattr(flow.env, "get_node_size", lambda: 1)
    with pytest.raises(LayoutError, match="places rank 3 on cuda:3"):
        ParallelContext(CUDA)
