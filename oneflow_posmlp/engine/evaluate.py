"""Evaluation on its own: top-1 / top-5 and loss of a model over a validation loader.

Needs only the model, the parallel context and the validation loader (optionally a compiled eval graph):
``tools/eval.py`` evaluates a checkpoint from a data root that holds only the validation split, and the
trainer calls the same :func:`evaluate` after its epochs.
"""
import oneflow as flow

from ..checkpoint.load import CONFIG_HEAD_FIX, load_pretrained
from ..data import build_val_dataset, build_val_loader
from ..models import build_model
from ..parallel import ParallelContext
from .graph import EvalGraph
from .loss_scaler import autocast
from .metrics import EvalMeter
from .state import rng_preserved


def eval_forward(model, ctx, graph=False, amp=False):
    """The ``forward`` :func:`evaluate` runs for ``model``: an :class:`~oneflow_posmlp.engine.graph.EvalGraph`
    sharing its modules (``graph``, as ``train.graph: true`` evaluates), else None (eager)."""
    return EvalGraph(model, amp=amp, ctx=ctx) if graph else None


def eval_logits(model, x, ctx, forward=None, amp=False):
    """The logits of one evaluation batch ``x`` (already placed by ``ctx``), as :func:`evaluate` computes them:
    ``forward(x)``, or ``model(x)`` under autocast when ``amp`` (CUDA). Call it in eval mode without gradients."""
    if forward is not None:
        return forward(x)
    with autocast(amp, ctx.device):
        return model(x)


def evaluate(model, loader, ctx, forward=None, amp=False):
    """``{loss, top1, top5, count}`` of ``model`` over ``loader`` (batches ``(x, y, valid)``, ``valid = 0`` on
    padding, as :func:`~oneflow_posmlp.data.build_val_loader` yields them).

    ``forward``: ``x -> logits`` to run instead of ``model(x)`` (an :class:`~oneflow_posmlp.engine.graph.EvalGraph`
    of ``model``). ``amp``: autocast the eager forward (CUDA). Leaves ``model``'s train/eval mode and the
    Python/NumPy/OneFlow RNGs as they were."""
    was_training = model.training
    model.eval()
    meter = EvalMeter()
    loss_fn = flow.nn.CrossEntropyLoss(reduction="none")
    with rng_preserved():
        batches = iter(loader)
    with flow.no_grad():
        for x, y, valid in batches:
            x, y, valid = ctx.to_global_batch(x, y, valid)
            logits = eval_logits(model, x, ctx, forward, amp)
            logits, y, valid = (ctx.replicate(t) for t in (logits.to(flow.float32), y, valid))
            meter.update(logits, y, valid, loss_fn)
    model.train(was_training)
    return meter.result()


def evaluate_weights(cfg, weights, source=None, log=None):
    """Evaluate ``weights`` (a path, ``(arrays, metadata)`` from :func:`~oneflow_posmlp.checkpoint.load_weights`, or
    ``{name: array}``) as the model of ``cfg`` on its validation split, in the layout of ``cfg['dist']``
    (``train.graph``: through an eval graph), loaded by :func:`~oneflow_posmlp.checkpoint.load_pretrained` (other
    windows carried over, each change to ``log``; ``source`` names the weights in errors). Builds only the model,
    the parallel context and the validation loader."""
    ctx = ParallelContext(cfg["dist"])
    loader = build_val_loader(cfg, build_val_dataset(cfg), ctx.data_rank, ctx.data_parallel)
    model = build_model(cfg["model"])
    # loaded into the local model before it becomes global: a checkpoint of any layout evaluates in any other
    load_pretrained(model, (weights, {}) if isinstance(weights, dict) else weights, head_fix=CONFIG_HEAD_FIX, log=log,
                    source=source)
    ctx.apply(model)
    amp = cfg["train"]["amp"] and ctx.device == "cuda"
    forward = eval_forward(model, ctx, graph=cfg["train"]["graph"], amp=amp)
    return evaluate(model, loader, ctx, forward=forward, amp=amp), ctx
