"""The optimizer side of a training step, shared by the trainer, its graph, the benchmark and the recipe test:
AdamW parameter groups, the optimizer built from the ``train:`` config (eager on CUDA: AdamW's fused form),
gradient clipping by one global norm (timm's ``clip_grad_norm_`` over all parameters, the official runs) or by
parameter group (what an ``nn.Graph`` does in OneFlow 0.9.0), and the weight EMA.
"""
import math
import re

import oneflow as flow
from flowvision.utils.model_ema import ModelEmaV2


def param_groups(model, weight_decay):
    """timm's rule: no weight decay on biases and 1-D parameters (norm scales)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def clip_param_groups(model, weight_decay, clip_grad):
    """:func:`param_groups` with in-graph clipping: an ``nn.Graph`` clips each group by its own 2-norm."""
    groups = param_groups(model, weight_decay)
    if clip_grad and clip_grad > 0:
        for g in groups:
            g["clip_grad_max_norm"] = float(clip_grad)
            g["clip_grad_norm_type"] = 2.0
    return groups


class AdamW(flow.optim.AdamW):
    """``flow.optim.AdamW`` whose ``fused`` form (one multi-tensor update per parameter group, CUDA-only in OneFlow
    0.9.0: ``AdamW(..., fused=True)``) is this run's choice, not a checkpoint's: ``load_state_dict`` takes every
    other option of the saved groups but keeps ``fused``, so a GPU checkpoint resumes on CPU (whose AdamW has no
    fused kernel) and a CPU one on a GPU runs fused."""

    def load_state_dict(self, state_dict):
        fused = [group["fused"] for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, f in zip(self.param_groups, fused):
            group["fused"] = f


def fusable(params):
    """Whether AdamW may update ``params`` with its fused kernel: all on CUDA and, for global tensors, all on one
    placement with one SBP (the multi-tensor update is one op over all its tensors, OneFlow 0.9.0 gives it a
    single all-broadcast signature; pipeline stages hold their parameters on other placements)."""
    params = list(params)
    if not params or not all(p.is_cuda for p in params):
        return False
    layouts = {(str(p.placement), tuple(p.sbp)) if p.is_global else None for p in params}
    return len(layouts) == 1 and (None in layouts or all(s == flow.sbp.broadcast for s in next(iter(layouts))[1]))


class GraphGlobalClipAdamW(AdamW):
    """AdamW that an ``nn.Graph`` clips by ONE norm over all parameters (timm's ``clip_grad_norm_``, the
    official runs). OneFlow 0.9.0 turns each parameter group into its own optimizer conf and clips each conf by
    its own norm; this optimizer hands the graph a single conf over all groups instead, at the decaying
    groups' weight decay, with the variables of the groups without weight decay excluded from it by name
    (``weight_decay_conf.excludes``). Groups may differ only in weight decay (one non-zero rate). Eagerly it
    is plain AdamW (the caller clips: :func:`clip_gradients`)."""

    def _generate_conf_for_graph(self, train_conf, vars_conf):
        start = len(train_conf.optimizer_conf)
        confs = super()._generate_conf_for_graph(train_conf, vars_conf)
        if len(confs) < 2:
            return confs
        rates = {g["weight_decay"] for g in self.param_groups} - {0.0}
        if len(rates) > 1:
            raise ValueError(f"one graph optimizer conf holds one weight decay, got the rates {sorted(rates)}")
        merged = type(confs[0])()
        merged.CopyFrom(confs[0])
        merged.weight_decay_conf.weight_decay_rate = rates.pop() if rates else 0.0
        for conf, group in zip(confs, self.param_groups):
            if _without(conf) != _without(confs[0]):
                raise ValueError("parameter groups that differ in more than weight decay cannot share a graph conf")
            if conf is not confs[0]:
                merged.variable_op_names.extend(conf.variable_op_names)
            if group["weight_decay"] == 0.0 and merged.weight_decay_conf.weight_decay_rate != 0.0:
                merged.weight_decay_conf.excludes.pattern.extend(
                    "^" + re.escape(vars_conf[p].name) + "$" for p in group.parameters if p.requires_grad)
        del train_conf.optimizer_conf[start:]
        train_conf.optimizer_conf.add().CopyFrom(merged)
        return [train_conf.optimizer_conf[start]]


def _without(conf):
    """An optimizer conf without its variables and weight decay (what parameter groups may differ in)."""
    out = type(conf)()
    out.CopyFrom(conf)
    out.ClearField("variable_op_names")
    out.ClearField("weight_decay_conf")
    return out.SerializeToString(deterministic=True)


def build_optimizer(model, train_cfg, lr, graph=False, clip_scope="group"):
    """AdamW over :func:`param_groups` with the ``train:`` section's betas, eps and weight decay at ``lr``.
    ``graph``: the optimizer clips inside an ``nn.Graph`` at ``train.clip_grad``, each parameter group by its
    own norm (``clip_scope="group"``, OneFlow's way) or all parameters by one norm (``"global"``,
    :class:`GraphGlobalClipAdamW`). Eager runs call :func:`clip_gradients` themselves."""
    t = train_cfg
    groups = clip_param_groups(model, t["weight_decay"], t["clip_grad"] if graph else 0)
    kind = GraphGlobalClipAdamW if graph and clip_scope == "global" else AdamW
    fused = not graph and fusable(p for g in groups for p in g["params"])  # eager on CUDA: the fused update
    return kind(groups, lr=lr, betas=tuple(t["opt_betas"]), eps=t["opt_eps"], fused=fused)


def clip_grad_norm(params, max_norm):
    """``flow.nn.utils.clip_grad_norm_`` returning the norm before clipping as a float."""
    return float(flow.nn.utils.clip_grad_norm_(params, max_norm).numpy())


def clip_gradients(optimizer, max_norm, scope="global", norm_fn=clip_grad_norm):
    """Clip the gradients of ``optimizer``'s parameters to 2-norm ``max_norm`` (<= 0: do not clip), over all
    of them at once (``scope="global"``) or each parameter group by its own norm (``"group"``).
    ``norm_fn(params, max_norm)`` clips one set and returns its norm, a float or a device scalar (e.g.
    ``ParallelContext.clip_grad_norm_`` across ranks, no host read). Returns the 2-norm of all gradients before
    clipping."""
    clip = max_norm if max_norm > 0 else math.inf
    if scope == "group":
        norms = [norm_fn(g.parameters, clip) for g in optimizer.param_groups]
        total = sum(n * n for n in norms)
        return math.sqrt(total) if isinstance(total, float) else flow.sqrt(total)  # a device norm stays there
    if scope != "global":
        raise ValueError(f"clip scope must be 'global' or 'group', got {scope!r}")
    return norm_fn([p for g in optimizer.param_groups for p in g.parameters], clip)


def build_ema(model, train_cfg):
    """flowvision's ``ModelEmaV2`` of ``model`` (every state-dict entry, buffers included) with
    ``train.ema_decay``, or ``None`` when ``train.ema`` is off. Update it after every optimizer step."""
    return ModelEmaV2(model, decay=train_cfg["ema_decay"]) if train_cfg["ema"] else None
