"""Where a run executes: rank, world, device, and data parallelism through global tensors (SBP).

With one process, tensors stay local. With several (``python -m oneflow.distributed.launch``), the model
is a global module (parameters ``broadcast``) and every batch a global tensor ``split(0)`` over all ranks:
OneFlow then reduces gradients itself, and BatchNorm sees the whole global batch.
"""
import oneflow as flow


class LayoutError(ValueError):
    """A parallel layout that does not fit the world size or the model; raised on every rank at start."""


class ParallelContext:
    def __init__(self, dist_cfg):
        self.world = flow.env.get_world_size()
        self.rank = flow.env.get_rank()
        self.device = dist_cfg["device"]
        if self.device == "cuda" and not flow.cuda.is_available():
            raise LayoutError("dist.device is 'cuda' but OneFlow sees no CUDA device; use --opts dist.device=cpu")
        dp = dist_cfg["data_parallel"] or self.world
        tp, pp = dist_cfg["tensor_parallel"], dist_cfg["pipeline_parallel"]
        if dp * tp * pp != self.world:
            raise LayoutError(f"dist layout data_parallel={dp} x tensor_parallel={tp} x pipeline_parallel={pp} = "
                              f"{dp * tp * pp} ranks, but {self.world} were launched; make the product equal the "
                              f"world size (data_parallel: 0 means all ranks)")
        if tp > 1 or pp > 1:
            raise LayoutError("tensor and pipeline parallelism are not implemented yet (issue #4); "
                              "use dist.tensor_parallel=1 and dist.pipeline_parallel=1")
        self.data_parallel = dp
        self.distributed = self.world > 1
        self.placement = flow.placement(self.device, ranks=list(range(self.world))) if self.distributed else None

    @property
    def is_main(self):
        return self.rank == 0

    def apply(self, module):
        """Move ``module`` to the device; under several ranks make it global with broadcast parameters."""
        module.to(self.device)
        if self.distributed:
            module.to_global(placement=self.placement, sbp=flow.sbp.broadcast)
        return module

    def to_global_batch(self, *tensors):
        """Local per-rank batches -> device tensors; global ``split(0)`` under several ranks."""
        out = []
        for t in tensors:
            t = t.to(self.device)
            if self.distributed:
                t = t.to_global(placement=self.placement, sbp=flow.sbp.split(0))
            out.append(t)
        return out if len(out) > 1 else out[0]

    def to_local(self, obj):
        """Replace broadcast global tensors by their (complete) local copies, recursively; no communication."""
        if isinstance(obj, flow.Tensor):
            return obj.to_local() if obj.is_global else obj
        if isinstance(obj, dict):
            return type(obj)((k, self.to_local(v)) for k, v in obj.items())
        if isinstance(obj, (list, tuple)):
            return type(obj)(self.to_local(v) for v in obj)
        return obj

    def average_buffers(self, module):
        """Average float buffers (BatchNorm running statistics) over the ranks, in place.

        Under data parallelism BatchNorm normalises each rank's shard with its own batch statistics (as DDP
        without SyncBN, the official setting) so every rank's running statistics drift apart; timm's
        ``dist_bn: reduce`` (the official config) averages them after each epoch. Returns a checksum.
        """
        total = 0.0
        for buf in module.buffers():
            if not buf.dtype.is_floating_point:
                continue
            local = buf.to_local() if buf.is_global else buf
            if self.distributed:
                reduced = local.clone()
                flow.comm.all_reduce(reduced)
                local.copy_(reduced / self.world)
            total += float(local.abs().sum().numpy())
        return total

    def barrier(self):
        if self.distributed:
            flow.comm.barrier()
