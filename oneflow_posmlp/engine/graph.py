"""nn.Graph-compiled steps (OneFlow 0.9.0): a train graph (forward, loss, backward, optimizer and lr
scheduler inside the graph) and an eval graph sharing the module.

Graph options follow the config: gradient clipping by norm (``clip_grad_max_norm`` on the optimizer's
parameter groups, applied inside the graph; OneFlow 0.9.0 clips each parameter group by that group's own
norm, not by one norm over all groups: ``tests/test_graph.py`` shows the difference), gradient accumulation, AMP with dynamic loss scaling (CUDA),
ZeRO sharding of optimizer state, activation checkpointing per level. A graph needs static input shapes:
train loaders drop the last batch, eval loaders pad.

Status: used by ``tools/benchmark.py`` and held to the eager step by ``tests/test_graph.py``; the trainer does
not run graphs yet (``train.graph`` is refused there), because the timm-style cosine schedule it uses is a
Python scheduler that a graph cannot run.
"""
import logging
import time

import oneflow as flow
import oneflow.nn as nn

_log = logging.getLogger("oneflow_posmlp")


def clip_param_groups(model, weight_decay, clip_grad):
    """AdamW parameter groups (no decay on biases and 1-D parameters) with in-graph clipping (per group)."""
    from .trainer import param_groups

    groups = param_groups(model, weight_decay)
    if clip_grad and clip_grad > 0:
        for g in groups:
            g["clip_grad_max_norm"] = float(clip_grad)
            g["clip_grad_norm_type"] = 2.0
    return groups


class TrainGraph(nn.Graph):
    """``graph(x, y) -> loss``: one compiled training step (or ``grad_accum`` micro-batches of one step)."""

    def __init__(self, model, criterion, optimizer, lr_scheduler=None, grad_accum=1, amp=False, zero_stage=0,
                 checkpoint_levels=False):
        super().__init__()
        self.model = model
        self.criterion = criterion
        self.add_optimizer(optimizer, lr_sch=lr_scheduler)
        if grad_accum > 1:
            self.config.set_gradient_accumulation_steps(grad_accum)
        if amp:
            self.config.enable_amp(True)
            self.set_grad_scaler(flow.amp.GradScaler(init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5,
                                                     growth_interval=2000))
        if zero_stage:
            self.config.enable_zero(True, stage=zero_stage)
        if checkpoint_levels:
            for level in model.levels:
                level.to(nn.graph.GraphModule).activation_checkpointing = True
        self.compile_seconds = None

    def build(self, x, y):
        loss = self.criterion(self.model(x), y)
        loss.backward()
        return loss

    def __call__(self, *args):
        if self.compile_seconds is None:
            start = time.perf_counter()
            out = super().__call__(*args)
            self.compile_seconds = time.perf_counter() - start
            _log.info(f"train graph compiled (and ran its first step) in {self.compile_seconds:.1f} s")
            return out
        return super().__call__(*args)


class EvalGraph(nn.Graph):
    """``graph(x) -> logits`` in eval mode, sharing the module (and so the weights) with a train graph."""

    def __init__(self, model, amp=False):
        super().__init__()
        self.model = model
        if amp:
            self.config.enable_amp(True)

    def build(self, x):
        return self.model(x)
