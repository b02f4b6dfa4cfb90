"""Pipeline parallelism over PosMLP's levels: which stage each part of the model runs on.

The stem (``patch_embed``) runs on stage 0, level ``i`` of ``L`` on stage ``i * S // L`` of ``S``, and the final
norm and the classifier on the last stage. Eagerly, a forward pre-hook moves each level's input to its stage's
placement; in an ``nn.Graph`` the same modules get ``set_stage`` (OneFlow inserts the move and, with gradient
accumulation, runs micro-batches through the stages as a pipeline).
"""
from .errors import LayoutError


def level_stages(num_levels, stages):
    """``[stage of level 0, ...]``; raises LayoutError when there are more stages than levels."""
    if stages > num_levels:
        raise LayoutError(f"dist.pipeline_parallel={stages} but the model has {num_levels} levels to place; "
                          f"use at most {num_levels} pipeline stages")
    return [i * stages // num_levels for i in range(num_levels)]


def module_stages(model, stages):
    """``{module name prefix: stage}`` for the stem, every level, the final norm and the head."""
    out = {"patch_embed": 0}
    for i, s in enumerate(level_stages(len(model.levels), stages)):
        out[f"levels.{i}"] = s
    out["norm"] = out["head"] = stages - 1
    return out


def stage_of(name, table):
    """The stage of parameter/buffer ``name`` (``levels.2.encoder.0.norm.weight`` -> stage of ``levels.2``)."""
    for prefix, stage in table.items():
        if name == prefix or name.startswith(prefix + "."):
            return stage
    raise LayoutError(f"no pipeline stage for {name}: the model has parts outside stem/levels/norm/head")


def add_stage_hooks(model, stages, placement_of_stage):
    """Eager pipeline: move every level's (and the final norm's) input to its stage's placement."""
    table = module_stages(model, stages)

    def mover(placement):
        def hook(module, args):
            return tuple(a.to_global(placement=placement) if a.placement != placement else a for a in args)
        return hook

    for i, level in enumerate(model.levels):
        level.register_forward_pre_hook(mover(placement_of_stage(table[f"levels.{i}"])))
    model.norm.register_forward_pre_hook(mover(placement_of_stage(table["norm"])))


def set_graph_stages(model, stages, placement_of_stage):
    """Graph pipeline: ``set_stage`` on the stem, the levels, the final norm and the head (call inside a Graph's
    ``__init__`` after the model is registered)."""
    import oneflow.nn as nn

    table = module_stages(model, stages)
    for prefix, stage in table.items():
        module = _get(model, prefix)
        module.to(nn.graph.GraphModule).set_stage(stage_id=stage, placement=placement_of_stage(stage))


def _get(model, prefix):
    m = model
    for part in prefix.split("."):
        m = getattr(m, part)
    return m
