"""Which CUDA device a rank uses under OneFlow 0.9.0, and the checks made before the first CUDA kernel.

OneFlow 0.9.0 (read in its sources, ``core/rpc/lib/global_process_ctx.cpp``, ``api/python/symbol/placement_symbol.cpp``,
``core/job/parallel_desc.cpp``):

* a process's own CUDA device (local tensors, ``"cuda"``, its CUDA generator) is ``cuda:LOCAL_RANK``
  (``GlobalProcessCtx::LocalRank``; without ``LOCAL_RANK``: rank mod ranks per node);
* a placement ``flow.placement("cuda", ranks=[...])`` puts rank ``r`` on device ``r mod ranks-per-node`` of
  its node (``ranks-per-node = world / nodes``, ranks laid out node by node), whatever ``LOCAL_RANK`` says,
  and refuses a device id at or above the number of devices the process sees ("Placement is invalid because
  device id must be less than num devices on node").

So every multi-rank CUDA run needs each process to see all the GPUs of its node (``CUDA_VISIBLE_DEVICES``
unset or listing them all; SLURM: no per-task GPU binding, docs/cluster.md); a process bound to one GPU works
only as the single rank of its node. :func:`check_cuda_devices` says so before OneFlow would fail on it.

The wheel's CUDA kernels (OneFlow 0.9.0 for CUDA 11.7, listed with ``cuobjdump --list-elf`` / ``--list-ptx`` of
``oneflow.libs/liboneflow-*.so`` and ``libcutlass-*.so``) are machine code for ``sm_60``-``sm_86`` without PTX:
they run on Pascal to Ada GPUs (compute capability 6.0-8.9: a binary for 8.6 runs on 8.9) and not on Hopper
(9.0: H100, H800, H200, H20), where nothing can be compiled from PTX; :func:`check_cuda_arch` says so.
"""
import os

from .errors import LayoutError

# compute capabilities (major, minor) the OneFlow 0.9.0 cu117 wheel has machine code for (no PTX)
WHEEL_SASS = ((6, 0), (6, 1), (7, 0), (7, 5), (8, 0), (8, 6))


def placement_device(rank, world, nodes):
    """The CUDA device index OneFlow 0.9.0 gives ``rank`` in a placement: rank mod ranks per node."""
    return rank % max(world // max(nodes, 1), 1)


def check_cuda_devices(rank, world, nodes, visible, environ=None):
    """Raise :class:`LayoutError` when this process cannot hold the device OneFlow's placements give its rank
    (``visible``: the CUDA devices this process sees). One rank: only one visible device is needed."""
    env = os.environ if environ is None else environ
    if visible < 1:
        raise LayoutError("dist.device is 'cuda' but this process sees no CUDA device; use --opts dist.device=cpu")
    if world <= 1:
        return
    device = placement_device(rank, world, nodes)
    if device >= visible:
        per_node = world // max(nodes, 1)
        shown = env.get("CUDA_VISIBLE_DEVICES")
        raise LayoutError(
            f"rank {rank}: OneFlow 0.9.0 places rank {rank} on cuda:{device} of its node (rank mod the {per_node} "
            f"ranks per node), but this process sees {visible} CUDA device(s)"
            + (f" (CUDA_VISIBLE_DEVICES={shown})" if shown is not None else "")
            + "; give every process all the GPUs of its node (SLURM: --gpus-per-node without --gpus-per-task or "
              "--gpu-bind=single:1; see docs/cluster.md)")


def check_cuda_arch(capability, name=""):
    """Raise :class:`LayoutError` for a GPU the wheel has no kernels for (``capability``: ``(major, minor)``)."""
    if any(major == capability[0] and minor <= capability[1] for major, minor in WHEEL_SASS):
        return
    built = ", ".join(f"sm_{a}{b}" for a, b in WHEEL_SASS)
    raise LayoutError(f"{name or 'this GPU'} (compute capability {capability[0]}.{capability[1]}) cannot run OneFlow "
                      f"0.9.0's CUDA 11.7 kernels: the wheel holds machine code for {built} and no PTX to compile "
                      f"for it ('no kernel image is available for execution on the device'); use a GPU of compute "
                      f"capability 6.0-8.9 (V100, T4, A100, A10, RTX 30xx/40xx, L40...), or dist.device=cpu")


def check_this_process():
    """The checks for this process, before its first CUDA kernel (``ParallelContext`` with ``dist.device: cuda``)."""
    import oneflow as flow

    visible = flow.cuda.device_count()
    check_cuda_devices(flow.env.get_rank(), flow.env.get_world_size(), flow.env.get_node_size(), visible)
    check_cuda_arch(flow.cuda.get_device_capability(), flow.cuda.get_device_name())
