"""The CUDA-only Python logic, run here (no GPU) with CUDA reported available: only OneFlow's questions are
patched (``flow.cuda.is_available``, ``flow.cuda.device_count``, device names and memory), never a kernel, so
everything that would run on a GPU host before the first CUDA kernel runs here as it would there.

Other CUDA sites are tested beside their modules: the rank's device and placement (tests/test_parallel_devices.py),
SLURM's LOCAL_RANK (tests/test_slurm.py), the MFU peaks (tests/test_engine_mfu.py), the micro-batch guidance
(tests/test_engine_guidance.py), the OneFlow API the code names (tests/test_oneflow_api.py)."""
import shutil
import warnings
from types import SimpleNamespace

import numpy as np
import oneflow as flow
import pytest

from conftest import tiny_train_opts
from oneflow_posmlp.checkpoint import read_oneflow_checkpoint
from oneflow_posmlp.config import load_config
from oneflow_posmlp.engine import Trainer
from oneflow_posmlp.engine.state import rng_preserved, rng_state, set_rng_state


A100 = SimpleNamespace(name="NVIDIA A100-SXM4-80GB", major=8, minor=0, total_memory=80 * 2 ** 30,
                       multi_processor_count=108)


def report_cuda(monkeypatch, count=2, props=A100):
    """OneFlow says ``count`` CUDA devices ``props`` are there (a GPU host); any CUDA kernel would still fail."""
    monkeypatch.setattr(flow.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(flow.cuda, "device_count", lambda: count)
    monkeypatch.setattr(flow.cuda, "get_device_properties", lambda device=None: props)  # name, capability, memory


@pytest.fixture
def cuda_reported(monkeypatch):
    report_cuda(monkeypatch)


def _draws():
    return flow.rand(4).numpy(), np.random.rand(2)


def test_rng_state_round_trip_with_cuda_reported(cuda_reported):
    # From a seed, as the training path draws (a micro-batch's flow.manual_seed): in OneFlow 0.9.0, once
    # flow.set_rng_state has run in a process (any earlier rng_preserved()), flow.get_rng_state keeps reporting
    # the state set while draws move on, until the next flow.manual_seed (engine/state.py, rng_state)
    flow.manual_seed(1234)
    saved = rng_state()
    assert set(saved) == {"python", "numpy", "oneflow"}  # no CUDA generator: reseeded per micro-batch
    first = _draws()
    set_rng_state(dict(saved, cuda=flow.zeros(8, dtype=flow.uint8)))  # a checkpoint naming a CUDA state loads
    again = _draws()
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    with rng_preserved():
        _draws()
    assert not np.array_equal(_draws()[0], again[0])  # the block left the generators where they were

@pytest.mark.slow  # trains the demo twice (27 s measured on the shared 2-core machine)
def test_demo_run_with_cuda_reported_finishes_and_resumes_exactly(cuda_reported, tiny_demo_root, tmp_path,
                                                                  monkeypatch):
    """A CPU run on a GPU host (``dist.device=cpu``, CUDA reported): the epochs (rng_preserved), the evaluations,
    the checkpoints (rng_state) and a mid-epoch resume (set_rng_state) run, and the resumed run ends where the
    uninterrupted one did (dropout, drop path, Mixup/CutMix and EMA on)."""
    opts = tiny_train_opts(tiny_demo_root, **{"dist.device": "cpu", "train.epochs": 2, "output.save_every_steps": 1,
                                              "model.drop_rate": 0.1, "model.drop_path_rate": 0.1, "aug.mixup": 0.8,
                                              "aug.cutmix": 1.0})
    cfg = load_config("configs/demo.yaml", opts)
    full, mid = tmp_path / "full", tmp_path / "mid"
    real_save = Trainer.save

    def save(self, name, **kw):  # keep the checkpoint of update 6 (mid epoch 1) aside
        seconds = real_save(self, name, **kw)
        if name == "last" and self.updates == 6 and self.batch_in_epoch:
            shutil.copytree(full / "last", mid / "last")
        return seconds

    monkeypatch.setattr(Trainer, "save", save)
    top1 = Trainer(cfg, output_dir=str(full)).fit()
    monkeypatch.setattr(Trainer, "save", real_save)
    assert top1 >= 0 and (mid / "last").is_dir()

    resumed = Trainer(cfg, output_dir=str(mid), resume="auto")
    assert resumed.epoch == 1 and resumed.batch_in_epoch == 2
    resumed.fit()
    a, b = read_oneflow_checkpoint(str(full / "last")), read_oneflow_checkpoint(str(mid / "last"))
    assert a["updates"] == b["updates"] == 8
    for part in ("model", "ema"):
        for k, v in a[part].items():
            assert np.abs(v.numpy().astype(np.float64) - b[part][k].numpy()).max() <= 1e-6, (part, k)


def _cuda_training(overrides, tiny_model_cfg):
    """The step a CUDA run builds (``build_training`` as the trainer and the benchmark call it) for a tiny model left
    on the CPU (moving it would run a CUDA kernel): returns ``(Training, ParallelContext, model)``."""
    from oneflow_posmlp.engine.step import build_training
    from oneflow_posmlp.models import build_model
    from oneflow_posmlp.parallel import ParallelContext

    opts = ["dist.device=cuda", *(f"{k}={v}" for k, v in overrides.items())]
    cfg = load_config("configs/demo.yaml", opts)
    ctx = ParallelContext(cfg["dist"])
    model = build_model(dict(tiny_model_cfg, num_classes=cfg["model"]["num_classes"]))
    return build_training(cfg, model, flow.nn.CrossEntropyLoss(), ctx, 10), ctx, model


@pytest.mark.parametrize("zero_stage", [0, 1, 2, 3])
@pytest.mark.parametrize("accum", [1, 4])
def test_graph_configs_of_a_cuda_run(cuda_reported, tiny_model_cfg, zero_stage, accum):
    """AMP, the dynamic loss scaler, ZeRO, accumulation and the fusions as a CUDA run's graph is configured."""
    from oneflow_posmlp.engine.graph import FUSIONS_LEFT_OFF

    training, ctx, model = _cuda_training({"train.graph": "true", "train.amp": "true", "dist.zero_stage": zero_stage,
                                    "train.grad_accum_steps": accum}, tiny_model_cfg)
    assert ctx.device == "cuda" and training.amp
    graph = training.step.graph
    proto = graph.config.proto
    assert proto.enable_auto_mixed_precision and "mixed_precision_data_type: kFloat16" in str(proto)
    assert (proto.num_gradient_accumulation_steps or 1) == accum
    # ZeRO (OneFlow's enable_zero): optimizer state sharded over the data-parallel ranks from stage 1 on
    assert proto.optimizer_placement_optimization_mode == ("distributed_split" if zero_stage else "")
    assert proto.enable_fuse_model_update_ops and proto.enable_fuse_add_to_output and proto.enable_fuse_cast_scale
    for option in FUSIONS_LEFT_OFF:
        assert not getattr(proto, option), option
    scaler = graph._grad_scaler  # AMP's dynamic loss scaling, as written into the job's train_conf
    assert (scaler._init_scale, scaler._growth_factor, scaler._backoff_factor, scaler._growth_interval) == \
        (2.0 ** 16, 2.0, 0.5, 2000) == (graph.initial_loss_scale, 2.0, 0.5, 2000)
    assert graph.returns_grad_norm == (accum == 1 and not zero_stage)
    evaluation = training.step.eval_forward(model).config.proto  # the eval graph: AMP too
    assert evaluation.enable_auto_mixed_precision and evaluation.enable_fuse_add_to_output


def test_eager_amp_step_of_a_cuda_run(cuda_reported, tiny_model_cfg, monkeypatch):
    """The eager CUDA step: AMP on, its loss scaler's state and skip; AdamW built in its fused form (asked of
    OneFlow 0.9.0's ``AdamW(..., fused=True)``, which here, the parameters being on the CPU, declines with its
    warning)."""
    from oneflow_posmlp.engine import optim

    monkeypatch.setattr(optim, "fusable", lambda params: True)  # the parameters' question: are they on CUDA?
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        training = _cuda_training({"train.amp": "true"}, tiny_model_cfg)[0]
    step = training.step
    assert training.amp and step.amp and step.scaler.enabled and step.loss_scale == 2.0 ** 16
    assert any("Fused Adamw only support cuda parameters" in str(w.message) for w in caught)

    scaler = step.scaler
    params = [p for p in step.params if p.ndim > 1][:2]
    for p in params:
        p.grad = flow.ones_like(p) * scaler.scale
    assert scaler.unscale_and_check(params) and all(float(p.grad.max().numpy()) == 1.0 for p in params)
    params[1].grad = flow.full_like(params[1], float("inf"))
    assert not scaler.unscale_and_check(params)  # overflow: the step is skipped, the scale backs off
    assert scaler.state_dict() == {"scale": 2.0 ** 15, "good_steps": 0, "enabled": True}
    for _ in range(scaler.growth_interval):
        scaler.update(True)
    assert scaler.scale == 2.0 ** 16
    restored = type(scaler)()
    restored.load_state_dict(scaler.state_dict())
    assert restored.state_dict() == scaler.state_dict()


def test_fused_adamw_only_for_cuda_parameters_of_one_layout():
    from types import SimpleNamespace as P

    from oneflow_posmlp.engine.optim import fusable

    b, s0 = flow.sbp.broadcast, flow.sbp.split(0)
    local = P(is_cuda=True, is_global=False)
    dp = P(is_cuda=True, is_global=True, placement="cuda:[0, 1]", sbp=(b,))
    assert fusable([local, local]) and fusable([dp, dp])
    assert not fusable([local, P(is_cuda=False, is_global=False)])  # a CPU parameter
    assert not fusable([dp, P(is_cuda=True, is_global=True, placement="cuda:[2, 3]", sbp=(b,))])  # pipeline stages
    assert not fusable([P(is_cuda=True, is_global=True, placement="cuda:[0, 1]", sbp=(s0,))])  # tensor parallel
    assert not fusable([])
