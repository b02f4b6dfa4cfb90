"""Dynamic loss scaling (eager AMP)."""
import math

import oneflow as flow

from oneflow_posmlp.engine.loss_scaler import DynamicLossScaler


def test_overflow_skips_and_backs_off_then_grows():
    p = flow.nn.Parameter(flow.ones(3))
    s = DynamicLossScaler(init_scale=8.0, growth_interval=2)
    s.scale_loss((p * 2).sum()).backward()
    assert s.unscale_and_check([p]) and flow.allclose(p.grad, flow.full((3,), 2.0))
    p.grad = flow.tensor([1.0, math.inf, 0.0])
    assert not s.unscale_and_check([p]) and s.scale == 4.0 and s.good_steps == 0
    for _ in range(2):
        p.grad = flow.ones(3)
        assert s.unscale_and_check([p])
    assert s.scale == 8.0
    restored = DynamicLossScaler()
    restored.load_state_dict(s.state_dict())
    assert restored.scale == 8.0 and restored.good_steps == 2


def test_disabled_is_identity():
    s = DynamicLossScaler(enabled=False)
    loss = flow.tensor(3.0)
    assert s.scale_loss(loss) is loss and s.unscale_and_check([])
