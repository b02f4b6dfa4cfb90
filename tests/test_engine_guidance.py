"""engine/guidance.py: one warning at start when the per-device micro-batch's activations do not fit the device,
naming train.grad_accum_steps and the global-batch rule; the measured table covers the shipped model sizes."""
import pytest

from conftest import tiny_train_opts
from oneflow_posmlp.config import load_config
from oneflow_posmlp.engine import Trainer
from oneflow_posmlp.engine import guidance as G

A100 = 80 * 2 ** 30


@pytest.mark.parametrize("config", ["configs/posmlp_t.yaml", "configs/posmlp_s.yaml", "configs/posmlp_b.yaml",
                                    "configs/posmlp_t_384_ft.yaml"])
def test_every_shipped_model_size_has_a_measured_figure(config):
    per_image = G.bytes_per_image(load_config(config)["model"])
    assert per_image is not None and 50 * 2 ** 20 < per_image < 2 * 2 ** 30


def test_a_shipped_config_on_one_gpu_is_warned_with_the_accumulation_that_fits():
    cfg = load_config("configs/posmlp_t.yaml")  # global batch 512
    line = G.micro_batch_warning(cfg, 1, A100, "NVIDIA A100-SXM4-80GB")
    per_image = G.bytes_per_image(cfg["model"])
    accum = G.fitting_accum(cfg["train"], 1, per_image, G.BUDGET * A100)
    assert accum > 1 and 512 % accum == 0 and 512 // accum * per_image <= G.BUDGET * A100
    assert 512 // (accum // 2) * per_image > G.BUDGET * A100 or accum == 2  # the smallest that fits (powers of 2)
    assert f"set train.grad_accum_steps={accum} (micro-batch {512 // accum}," in line
    assert "train.batch_size 512 is the global batch (micro-batch per device x 1 data-parallel rank(s) x " \
           "train.grad_accum_steps 1)" in line and "micro-batches of 512 images" in line
    assert "posmlp_t" in line and "NVIDIA A100-SXM4-80GB" in line and "train.lr_base_batch" in line


def test_no_warning_when_the_micro_batch_fits_or_nothing_was_measured():
    cfg = load_config("configs/posmlp_t.yaml")
    assert G.micro_batch_warning(cfg, 8, A100, "A100") is None  # 8 ranks: micro-batches of 64
    accum = load_config("configs/posmlp_t.yaml", ["train.grad_accum_steps=16"])
    assert G.micro_batch_warning(accum, 1, A100, "A100") is None  # micro-batches of 32
    demo = load_config("configs/demo.yaml")  # no figure for this architecture
    assert G.micro_batch_warning(demo, 1, 2 ** 20, "tiny") is None
    ckpt = load_config("configs/posmlp_t.yaml", ["dist.activation_checkpointing=[2]", "train.graph=true"])
    assert G.micro_batch_warning(ckpt, 1, A100, "A100") is None  # recomputation: the figure does not apply


def test_the_trainer_warns_once_at_start(tiny_demo_root, tmp_path, monkeypatch):
    cfg = load_config("configs/demo.yaml", tiny_train_opts(tiny_demo_root, **{"train.epochs": 1}))
    # this machine's memory as the budget, an architecture figure that does not fit it
    monkeypatch.setitem(G.ACTIVATION_BYTES_PER_IMAGE, G.architecture(cfg["model"]), ("demo", 2 ** 40))
    Trainer(cfg, output_dir=str(tmp_path))
    lines = [ln for ln in (tmp_path / "log_rank0.txt").read_text().splitlines() if "train.grad_accum_steps" in ln]
    assert len(lines) == 1 and "is the global batch" in lines[0] and "this host's memory" in lines[0]
    assert "even one image per micro-batch does not fit" in lines[0]
