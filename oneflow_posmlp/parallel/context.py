"""Where a run executes: rank, world, device, and the parallel layout through global tensors (SBP).

``dist: {data_parallel: dp, tensor_parallel: tp, pipeline_parallel: pp}`` with ``dp * tp * pp`` equal to the
number of launched ranks. Ranks are laid out stage by stage; inside a stage as a ``[dp, tp]`` grid
(``rank = stage * dp * tp + d * tp + t``), a 2-D placement when both ``dp`` and ``tp`` exceed 1.

- data parallel: every batch is a global tensor ``split(0)`` over the ``dp`` axis (each rank loads only its
  shard); parameters are ``broadcast`` on it and OneFlow reduces the gradients;
- tensor parallel: parameters follow :mod:`.tensor_parallel` on the ``tp`` axis, batches are ``broadcast``
  on it (the ranks of one ``dp`` index load the same shard);
- pipeline parallel: each part of the model lives on its stage's placement (:mod:`.pipeline`).

With one process, tensors stay local. One model definition serves every layout: :meth:`ParallelContext.apply`
turns a local module into a global one.
"""
import math

import numpy as np
import oneflow as flow

from ..cpu_kernels import apply_cpu_kernels
from . import devices, pipeline
from .errors import LayoutError
from .tensor_parallel import DEFAULT_MODE, check_mode, check_tensor_parallel, configure_blocks, tensor_parallel_plan


class ParallelContext:
    def __init__(self, dist_cfg):
        self.world = flow.env.get_world_size()
        self.rank = flow.env.get_rank()
        self.device = dist_cfg["device"]
        self.cpu_kernels = dist_cfg.get("cpu_kernels", True)
        if self.device == "cuda" and not flow.cuda.is_available():
            raise LayoutError("dist.device is 'cuda' but OneFlow sees no CUDA device; use --opts dist.device=cpu")
        if self.device == "cuda":
            devices.check_this_process()  # the rank's device is visible, the GPU can run the wheel's kernels
        tp, pp = dist_cfg["tensor_parallel"], dist_cfg["pipeline_parallel"]
        dp = dist_cfg["data_parallel"] or max(self.world // (tp * pp), 1)
        if dp * tp * pp != self.world:
            raise LayoutError(f"dist layout data_parallel={dp} x tensor_parallel={tp} x pipeline_parallel={pp} = "
                              f"{dp * tp * pp} ranks, but {self.world} were launched; make the product equal the "
                              f"world size (data_parallel: 0 means world / (tensor_parallel x pipeline_parallel))")
        self.data_parallel, self.tensor_parallel, self.pipeline_parallel = dp, tp, pp
        self.tensor_parallel_mode = dist_cfg.get("tensor_parallel_mode", DEFAULT_MODE)
        check_mode(self.tensor_parallel_mode)
        self._stored_orders = {}  # id(parameter): (parameter, axis, inverse order) of the permuted parameters
        self.distributed = self.world > 1
        per_stage = dp * tp
        self.stage = self.rank // per_stage
        self.data_rank = (self.rank % per_stage) // tp
        self.tp_rank = self.rank % tp
        self.stage_placements = [self._stage_placement(s) for s in range(pp)] if self.distributed else [None]
        self.placement = self.stage_placements[0]  # where inputs go (stage 0)
        self.all_placement = flow.placement(self.device, ranks=list(range(self.world))) if self.distributed else None

    def _stage_placement(self, stage):
        base = stage * self.data_parallel * self.tensor_parallel
        if self.data_parallel > 1 and self.tensor_parallel > 1:
            ranks = [[base + d * self.tensor_parallel + t for t in range(self.tensor_parallel)]
                     for d in range(self.data_parallel)]
        else:
            ranks = list(range(base, base + self.data_parallel * self.tensor_parallel))
        return flow.placement(self.device, ranks=ranks)

    @property
    def is_main(self):
        return self.rank == 0

    def describe(self):
        mode = f" ({self.tensor_parallel_mode})" if self.tensor_parallel > 1 else ""
        return (f"{self.world} rank(s) ({self.device}): data_parallel {self.data_parallel} x tensor_parallel "
                f"{self.tensor_parallel}{mode} x pipeline_parallel {self.pipeline_parallel}")

    # ----------------------------------------------------------------- SBP
    def sbp(self, dp_sbp, tp_sbp):
        """The SBP for a placement of this layout: a pair on a 2-D ``[dp, tp]`` placement, else one."""
        if self.data_parallel > 1 and self.tensor_parallel > 1:
            return (dp_sbp, tp_sbp)
        if self.data_parallel > 1:
            return dp_sbp
        if self.tensor_parallel > 1:
            return tp_sbp
        return flow.sbp.broadcast

    def _replicated(self):
        return self.sbp(flow.sbp.broadcast, flow.sbp.broadcast)

    # ----------------------------------------------------------------- model
    def check_model(self, model):
        """Raise LayoutError (on every rank, before any collective) if the layout cannot split ``model``."""
        check_tensor_parallel(model, self.tensor_parallel, self.tensor_parallel_mode)
        pipeline.level_stages(len(model.levels), self.pipeline_parallel)

    def apply(self, module):
        """Move ``module`` to the device (on CPU with the CPU kernels, unless ``dist.cpu_kernels`` or
        ``POSMLP_CPU_KERNELS=0`` turns them off: :func:`~oneflow_posmlp.cpu_kernels.apply_cpu_kernels`); under several
        ranks make it global: each parameter on its pipeline stage's placement with its tensor-parallel SBP
        (``broadcast`` on the data-parallel axis), stored in the plan's order where the plan permutes it
        (:attr:`~.tensor_parallel.Plan.orders`; undone by :meth:`gather`)."""
        module.to(self.device)
        if self.device == "cpu":
            apply_cpu_kernels(module, self.cpu_kernels)
        if not self.distributed:
            return module
        self.check_model(module)
        stages = pipeline.module_stages(module, self.pipeline_parallel)
        plan = tensor_parallel_plan(module, self.tensor_parallel_mode, self.tensor_parallel) \
            if self.tensor_parallel > 1 else None
        split, orders = (plan.sbps, plan.orders) if plan else ({}, {})
        targets = {}
        for name, p in module.named_parameters():
            targets[id(p)] = (self.stage_placements[pipeline.stage_of(name, stages)],
                              self.sbp(flow.sbp.broadcast, split.get(name, flow.sbp.broadcast)), orders.get(name))
        for name, b in module.named_buffers():
            targets[id(b)] = (self.stage_placements[pipeline.stage_of(name, stages)], self._replicated(), None)
        def to_target(t):
            # a local tensor given to to_global is taken as this rank's part of the SBP: declare the (identical)
            # complete copies broadcast first, then re-split them as the layout wants
            placement, sbp, order = targets[id(t)]
            if order is not None:  # the parallel layout's stored order (tensor_parallel.Plan.orders)
                t = _permuted(t, *order)
            return _split_complete(t, placement, sbp)

        module._apply(to_target)
        for name, p in module.named_parameters():
            if name in orders:
                axis, order = orders[name]
                self._stored_orders[id(p)] = (p, axis, np.argsort(order))
        if plan:
            configure_blocks(module, plan, self.sbp(flow.sbp.split(0), flow.sbp.broadcast), self.tensor_parallel)
        if self.pipeline_parallel > 1:
            pipeline.add_stage_hooks(module, self.pipeline_parallel, lambda s: self.stage_placements[s])
        return module

    def set_graph_stages(self, graph_model):
        """Inside an ``nn.Graph``: ``set_stage`` on the parts of the model (pipeline parallel only)."""
        if self.distributed and self.pipeline_parallel > 1:
            pipeline.set_graph_stages(graph_model, self.pipeline_parallel, lambda s: self.stage_placements[s])

    # ----------------------------------------------------------------- data
    def to_global_batch(self, *tensors):
        """Local per-rank batches -> device tensors; under several ranks global tensors, ``split(0)`` over the
        data-parallel axis, ``broadcast`` over the tensor-parallel one. The images go to the first pipeline
        stage; every other tensor (labels, masks) to the last, where the logits are."""
        out = []
        for i, t in enumerate(tensors):
            t = t.to(self.device)
            if self.distributed:
                placement = self.stage_placements[0 if i == 0 else -1]
                t = t.to_global(placement=placement, sbp=self.sbp(flow.sbp.split(0), flow.sbp.broadcast))
            out.append(t)
        return out if len(out) > 1 else out[0]

    # ----------------------------------------------------------------- state
    def gather(self, obj):
        """Replace global tensors by complete local copies on every rank, recursively (a collective: call it on
        every rank); a parameter the layout stores permuted (the ``groups`` plan) comes back in the official
        order. Checkpoints are saved from these, so they load into any layout. (OneFlow 0.9.0's
        ``state_dict()`` holds the parameters themselves, which is how a model's permuted ones are recognised;
        optimizer moments go through :meth:`optimizer_state_to_official` first.)"""
        if isinstance(obj, flow.Tensor):
            if not obj.is_global:
                return obj
            stored = self._stored_orders.get(id(obj))
            full = self._complete(obj)
            if stored is not None and stored[0] is obj:
                full = _permuted(full, stored[1], stored[2])
            return full
        if isinstance(obj, dict):
            return type(obj)((k, self.gather(v)) for k, v in obj.items())
        if isinstance(obj, (list, tuple)):
            return type(obj)(self.gather(v) for v in obj)
        return obj

    def optimizer_state_to_global(self, opt_state, optimizer):
        """A gathered optimizer state dict -> the placement and SBP of each state's parameter."""
        if not self.distributed:
            return opt_state
        params = [p for group in optimizer.param_groups for p in group.parameters]
        state = {}
        for idx, per_param in opt_state["state"].items():
            if not isinstance(per_param, dict):  # e.g. the step counter
                state[idx] = per_param
                continue
            p = params[int(idx)]
            stored = self._stored_orders.get(id(p))
            order = np.argsort(stored[2]) if stored is not None else None

            def placed(v):
                if v.shape != p.shape:
                    return _split_complete(v.to(self.device), p.placement, [flow.sbp.broadcast] * len(p.sbp))
                v = _permuted(v.to(self.device), stored[1], order) if order is not None else v.to(self.device)
                return _split_complete(v, p.placement, p.sbp)

            state[idx] = {k: placed(v) if isinstance(v, flow.Tensor) else v for k, v in per_param.items()}
        return dict(opt_state, state=state)

    def _complete(self, t):
        """A complete local copy of the global tensor ``t`` on every rank (a collective)."""
        return t.to_global(placement=self.all_placement, sbp=flow.sbp.broadcast).to_local()

    def optimizer_state_to_official(self, opt_state, optimizer):
        """An optimizer state dict (eager format) with the moments of the parameters the layout stores permuted
        gathered to complete local copies in the official order (the other tensors stay as they are, for
        :meth:`gather`): what a checkpoint holds, in every layout. A collective under the ``groups`` plan."""
        if not self._stored_orders:
            return opt_state
        params = [p for group in optimizer.param_groups for p in group.parameters]
        state = {}
        for idx, per_param in opt_state["state"].items():
            stored = self._stored_orders.get(id(params[int(idx)])) if isinstance(per_param, dict) else None
            if stored is None:
                state[idx] = per_param
                continue
            state[idx] = {k: (_permuted(self._complete(v), stored[1], stored[2])
                              if isinstance(v, flow.Tensor) and v.is_global and v.shape == stored[0].shape else v)
                          for k, v in per_param.items()}
        return dict(opt_state, state=state)

    def average_buffers(self, module):
        """Average float buffers (BatchNorm running statistics) over the data-parallel ranks, in place.

        Under data parallelism BatchNorm normalises each rank's shard with its own batch statistics (as DDP
        without SyncBN, the official setting) so every rank's running statistics drift apart; timm's
        ``dist_bn: reduce`` (the official config) averages them after each epoch. Returns a checksum (of this
        rank's pipeline stage).
        """
        total = 0.0
        for buf in module.buffers():
            if not buf.dtype.is_floating_point:
                continue
            if self.distributed and self.data_parallel > 1:
                local = buf.to_local()
                summed = local.to_global(placement=buf.placement,
                                         sbp=self.sbp(flow.sbp.partial_sum, flow.sbp.broadcast))
                averaged = summed.to_global(sbp=buf.sbp).to_local() / self.data_parallel
                local.copy_(averaged)
            local = buf.to_local() if buf.is_global else buf
            total += float(local.abs().sum().numpy()) if local.numel() else 0.0
        return total

    def replica_divergence(self, module):
        """The largest difference between the ranks' local copies of ``module``'s replicated (all-``broadcast``)
        parameters: 0.0 when every rank holds the same values, as it must. Random masks that disagree where
        the ranks should agree (e.g. dropout along a tensor-parallel axis) make the copies drift apart
        silently; this makes it visible. A collective: call it on every rank. 0.0 on one process."""
        if not self.distributed:
            return 0.0
        worst = []
        for p in module.parameters():
            if any(s != flow.sbp.broadcast for s in p.sbp):
                continue
            local = p.to_local().detach().to(flow.float64)
            partial = [flow.sbp.partial_sum] * len(p.sbp)
            n = p.placement.ranks.size
            mean = local.to_global(placement=p.placement, sbp=partial).to_global(sbp=p.sbp).to_local() / n
            worst.append(((local - mean).abs().max() if local.numel() else flow.zeros(())).reshape(1)
                         .to_global(placement=p.placement, sbp=partial)
                         .to_global(placement=self.all_placement, sbp=flow.sbp.broadcast).to_local())
        return float(flow.cat(worst).max().numpy()) if worst else 0.0

    def clip_grad_norm_(self, params, max_norm):
        """Clip by the global 2-norm of all gradients (over pipeline stages too) without reading it: returns the
        norm as a device scalar (``max_norm = inf``: no clipping)."""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return flow.zeros(1, dtype=flow.float32, device=self.device)
        if not self.distributed or self.pipeline_parallel == 1:
            return flow.nn.utils.clip_grad_norm_(params, max_norm)
        squares = [flow.sum(g * g).to_global(placement=self.all_placement, sbp=flow.sbp.broadcast) for g in grads]
        norm = flow.sqrt(flow.stack(squares).sum().to(flow.float64))
        if math.isfinite(max_norm):
            scale = flow.where(norm > max_norm, max_norm / (norm + 1e-6), flow.ones_like(norm)).to(flow.float32)
            for g in grads:
                g.mul_(scale.to_global(placement=g.placement, sbp=[flow.sbp.broadcast] * len(g.sbp)))
        return norm

    def replicate(self, t):
        """Under pipeline parallelism, a tensor of the last stage made visible on every rank (to read it)."""
        if self.distributed and self.pipeline_parallel > 1:
            return t.to_global(placement=self.all_placement, sbp=flow.sbp.broadcast)
        return t

    def barrier(self):
        if self.distributed:
            flow.comm.barrier()


def _permuted(t, axis, order):
    """``t.index_select(axis, order)`` of a local tensor (``order``: int64 NumPy array)."""
    return flow.index_select(t, axis, flow.tensor(order, device=t.device))


def _split_complete(t, placement, sbp):
    """A complete local copy (the same on every rank) -> a global tensor with ``sbp``. ``to_global`` takes a
    local tensor as this rank's part of the SBP, so declare the copies ``broadcast`` first, then re-split."""
    replicated = [flow.sbp.broadcast] * len(placement.ranks.shape)
    return t.to_global(placement=placement, sbp=replicated).to_global(placement=placement, sbp=sbp)
