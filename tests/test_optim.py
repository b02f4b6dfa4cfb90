"""engine/optim.py: timm's parameter groups, clipping by one global norm or by group, and the AdamW whose
graph clips by one global norm (its equivalence to the official run is in test_recipe_equivalence.py)."""
import copy
import math

import numpy as np
import oneflow as flow
import pytest

from oneflow_posmlp.engine.optim import GraphGlobalClipAdamW, clip_gradients, param_groups


class _Net(flow.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = flow.nn.Linear(3, 2)
        self.norm = flow.nn.LayerNorm(2)

    def forward(self, x):
        return self.norm(self.fc(x))


def _with_grads(seed=0):
    flow.manual_seed(seed)
    net = _Net()
    opt = flow.optim.AdamW(param_groups(net, 0.05), lr=1e-3)
    rng = np.random.default_rng(seed)
    for p in net.parameters():
        p.grad = flow.tensor(rng.standard_normal(p.shape).astype(np.float32) * 10)
    return net, opt


def test_no_weight_decay_on_biases_and_1d_parameters():
    decay, no_decay = param_groups(_Net(), 0.05)
    assert [p.shape for p in decay["params"]] == [(2, 3)] and decay["weight_decay"] == 0.05
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0


def test_global_and_group_clipping_report_the_same_norm_and_clip_differently():
    (net_g, opt_g), (net_p, opt_p) = _with_grads(), _with_grads()
    total = math.sqrt(sum(float((p.grad ** 2).sum().numpy()) for p in net_g.parameters()))
    assert clip_gradients(opt_g, 1.0, "global") == pytest.approx(total, rel=1e-6)
    assert clip_gradients(opt_p, 1.0, "group") == pytest.approx(total, rel=1e-6)
    after_g = math.sqrt(sum(float((p.grad ** 2).sum().numpy()) for p in net_g.parameters()))
    after_p = [math.sqrt(sum(float((p.grad ** 2).sum().numpy()) for p in g.parameters)) for g in opt_p.param_groups]
    assert after_g == pytest.approx(1.0, rel=1e-4)  # one norm over all
    assert after_p == pytest.approx([1.0, 1.0], rel=1e-4)  # each group by its own
    net, opt = _with_grads()
    assert clip_gradients(opt, 0.0, "global") == pytest.approx(total, rel=1e-6)  # 0: measure, do not clip
    with pytest.raises(ValueError, match="clip scope must be 'global' or 'group'"):
        clip_gradients(opt, 1.0, "layer")


class _Step(flow.nn.Graph):
    def __init__(self, net, opt):
        super().__init__()
        self.net = net
        self.add_optimizer(opt)

    def build(self, x):
        loss = self.net(x).sum()
        loss.backward()
        return loss


def test_graph_global_clip_adamw_refuses_groups_it_cannot_merge():
    net = _Net()
    groups = [{"params": [net.fc.weight], "weight_decay": 0.05},
              {"params": [net.fc.bias, net.norm.weight, net.norm.bias], "weight_decay": 0.01}]
    with pytest.raises(Exception, match="one graph optimizer conf holds one weight decay"):
        _Step(net, GraphGlobalClipAdamW(groups, lr=1e-3))(flow.ones(2, 3))


def test_adamw_keeps_its_own_fused_choice_when_loading_a_checkpoint():
    """A GPU run's optimizer state (``fused: True``) resumes on CPU, whose AdamW has no fused kernel, and steps."""
    from oneflow_posmlp.engine.optim import AdamW, fusable

    model = flow.nn.Linear(3, 2)
    opt = AdamW(model.parameters(), lr=0.1)
    assert not fusable(model.parameters()) and opt.param_groups[0]["fused"] is False
    saved = copy.deepcopy(opt.state_dict())  # (state_dict shares the live options)
    saved["param_groups"][0]["_options"]["fused"] = True  # as written by an eager CUDA run
    opt.load_state_dict(saved)
    assert opt.param_groups[0]["fused"] is False
    model(flow.ones(1, 3)).sum().backward()
    opt.step()
