"""The nn.Graph train step equals the eager step: same losses over 3 AdamW steps with in-graph gradient
clipping, and the same weights after (tolerance 1e-5 on losses and weights).

OneFlow 0.9.0 applies a graph optimizer's ``clip_grad_max_norm`` to each parameter group on its own (each
group becomes one optimizer conf in the job), so the eager reference clips each group by its own norm too.
Global clipping over both groups gives different losses here (checked in the test), so the comparison is
sensitive to the clipping semantics."""
import numpy as np
import oneflow as flow

from conftest import TINY_MODEL_CFG
from oneflow_posmlp.cpu_kernels import apply_cpu_kernels
from oneflow_posmlp.engine.graph import EvalGraph, TrainGraph, clip_param_groups
from oneflow_posmlp.models import build_model


def _setup():
    flow.manual_seed(0)
    # stem_norm LN: a conv bias right before BatchNorm has a true gradient of 0, and AdamW turns the rounding
    # noise left in it into +-lr steps that differ between any two execution orders (seen: 2e-3 after 3 steps)
    model = build_model(dict(TINY_MODEL_CFG, img_size=32, win_size=[4, 4, 2, 1], stem_norm="LN"))
    apply_cpu_kernels(model)  # as a CPU run (ParallelContext.apply): the kernels' graph forms compile too
    opt = flow.optim.AdamW(clip_param_groups(model, 0.05, clip_grad=0.5), lr=1e-3)
    return model, opt


def _batches():
    rng = np.random.default_rng(0)
    return [(flow.tensor(rng.standard_normal((4, 3, 32, 32)).astype(np.float32)),
             flow.tensor(rng.integers(0, 5, 4))) for _ in range(3)]


def _eager_losses(batches, clip_scope):
    model, opt = _setup()
    criterion = flow.nn.CrossEntropyLoss()
    losses = []
    for x, y in batches:
        loss = criterion(model(x), y)
        loss.backward()
        groups = [g.parameters for g in opt.param_groups] if clip_scope == "group" else [list(model.parameters())]
        for params in groups:
            flow.nn.utils.clip_grad_norm_(params, 0.5)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return model, losses


def test_train_graph_equals_eager_step():
    batches = _batches()
    criterion = flow.nn.CrossEntropyLoss()
    eager, eager_losses = _eager_losses(batches, "group")
    _, global_losses = _eager_losses(batches, "global")
    assert np.abs(np.array(global_losses) - eager_losses).max() > 1e-4  # the clipping scope is visible
    model, opt = _setup()
    graph = TrainGraph(model, criterion, opt)
    graph_losses = [graph(x, y).item() for x, y in batches]
    assert graph.compile_seconds is not None and graph.compile_seconds > 0
    np.testing.assert_allclose(graph_losses, eager_losses, atol=1e-5)
    for (k, a), b in zip(eager.state_dict().items(), model.state_dict().values()):
        if k.endswith("num_batches_tracked"):  # the graph does not count it; unused with a fixed momentum
            continue
        assert np.abs(a.numpy().astype(np.float64) - b.numpy()).max() <= 1e-5, k

    model.eval()
    with flow.no_grad():
        expected = model(batches[0][0]).numpy()
    np.testing.assert_allclose(EvalGraph(model)(batches[0][0]).numpy(), expected, atol=1e-5)


def test_train_graph_accumulates_micro_batches():
    """A one-process graph with gradient accumulation (``train.grad_accum_steps=2``) compiles and equals eager
    accumulation (each micro-batch's loss / 2, one update). OneFlow 0.9.0 aborted such a graph while the CPU
    LayerNorm used the BatchNorm kernel (cpu_kernels/layer_norm.py)."""
    rng = np.random.default_rng(1)
    x = flow.tensor(rng.standard_normal((8, 3, 32, 32)).astype(np.float32))
    y = flow.tensor(rng.integers(0, 5, 8))
    criterion = flow.nn.CrossEntropyLoss()
    eager, opt = _setup()
    losses = []
    for xm, ym in ((x[:4], y[:4]), (x[4:], y[4:])):
        loss = criterion(eager(xm), ym)
        (loss / 2).backward()
        losses.append(loss.item())
    for g in opt.param_groups:
        flow.nn.utils.clip_grad_norm_(g.parameters, 0.5)
    opt.step()
    model, opt = _setup()
    graph_losses = TrainGraph(model, criterion, opt, grad_accum=2)(x, y).numpy().reshape(-1)
    np.testing.assert_allclose(graph_losses, losses, atol=1e-5)
    for (k, a), b in zip(eager.state_dict().items(), model.state_dict().values()):
        if not k.endswith("num_batches_tracked"):
            assert np.abs(a.numpy() - b.numpy()).max() <= 1e-5, k


def test_graph_step_returns_the_eager_steps_gradient_norm_before_clipping(tiny_demo_root, tmp_path):
    """``GraphStep`` (a TrainGraph returning its gradient norm) and ``EagerStep`` with the graph's semantics
    (per-group clipping, OneFlow's schedule): the same norms over 3 updates, where clipping to 0.05 leaves the
    gradients a hundredth of their norm (so a clipped norm could not match)."""
    from conftest import tiny_train_opts
    from oneflow_posmlp.config import load_config
    from oneflow_posmlp.engine import Trainer

    norms = {}
    for mode in ("eager", "graph"):
        opts = {"train.graph": str(mode == "graph").lower(), "train.clip_grad": 0.05, "train.clip_scope": "group",
                "train.scheduler": "oneflow", "train.epochs": 1, "data.limit_train_batches": 3, "train.ema": "false",
                "model.stem_norm": "LN"}  # (why LN: _setup)
        trainer = Trainer(load_config("configs/demo.yaml", tiny_train_opts(tiny_demo_root, **opts)),
                          output_dir=str(tmp_path / mode))
        run, got = trainer.step.run, []

        def spy(*args, run=run, got=got):
            result = run(*args)
            got.append(result.grad_norm)
            return result

        trainer.step.run = spy
        trainer.train_one_epoch()
        norms[mode] = got
    assert len(norms["graph"]) == 3 and min(norms["eager"]) > 1.0
    np.testing.assert_allclose(norms["graph"], norms["eager"], rtol=1e-5)


def update_ops(graph):
    """``{op name: input names}`` of the optimizer update ops in a compiled graph's plan (after OneFlow's passes)."""
    ops = graph._compiled_graph_proto.net.op
    return {op.name: sorted(op.user_conf.input) for op in ops
            if op.HasField("user_conf") and op.user_conf.op_type_name.endswith("_update")}


def test_compiled_update_ops_keep_the_loss_scalers_skip_and_scale():
    """With the fusions the train graph turns on, every AdamW update op of the compiled plan still takes the loss
    scaler's ``skip_if`` (a step with non-finite gradients is not applied) and ``scale_by_tensor`` (1 / scale)."""
    model, opt = _setup()
    graph = TrainGraph(model, flow.nn.CrossEntropyLoss(), opt)
    x, y = _batches()[0]
    graph(x, y)
    ops = update_ops(graph)
    assert len(ops) == len(list(model.parameters()))
    assert all({"skip_if", "scale_by_tensor"} <= set(inputs) for inputs in ops.values()), ops
    proto = graph.config.proto
    assert proto.enable_fuse_model_update_ops and proto.enable_fuse_add_to_output and proto.enable_fuse_cast_scale
    assert not proto.enable_multi_tensor_update and not proto.enable_fused_model_update_cast
