"""Dynamic loss scaling for eager mixed precision (OneFlow 0.9's ``flow.amp.GradScaler`` serves nn.Graph only)."""
import math

import oneflow as flow


class DynamicLossScaler:
    """Scale the loss, unscale the gradients, skip the step when they overflow.

    On overflow (a non-finite gradient) the step is skipped and the scale multiplied by ``backoff``;
    after ``growth_interval`` good steps it is multiplied by ``growth``.
    """

    def __init__(self, init_scale=2.0 ** 16, growth=2.0, backoff=0.5, growth_interval=2000, enabled=True):
        self.scale, self.growth, self.backoff = float(init_scale), growth, backoff
        self.growth_interval, self.enabled = growth_interval, enabled
        self.good_steps = 0

    def scale_loss(self, loss):
        return loss * self.scale if self.enabled else loss

    def unscale_and_check(self, params):
        """Divide gradients by the scale; return False (skip the step) if any is not finite."""
        if not self.enabled:
            return True
        grads = [p.grad for p in params if p.grad is not None]
        inv = 1.0 / self.scale
        finite = True
        for g in grads:
            g.mul_(inv)
        total = sum(float(g.abs().sum().numpy()) for g in grads) if grads else 0.0
        if not math.isfinite(total):
            finite = False
        self.update(finite)
        return finite

    def update(self, finite):
        if finite:
            self.good_steps += 1
            if self.good_steps % self.growth_interval == 0:
                self.scale *= self.growth
        else:
            self.good_steps = 0
            self.scale = max(self.scale * self.backoff, 1.0)

    def state_dict(self):
        return {"scale": self.scale, "good_steps": self.good_steps, "enabled": self.enabled}

    def load_state_dict(self, state):
        self.scale, self.good_steps, self.enabled = state["scale"], state["good_steps"], state["enabled"]


def autocast(enabled, device):
    """``flow.autocast`` on CUDA when enabled, else a no-op context."""
    import contextlib

    if enabled and device == "cuda":
        return flow.autocast(device_type="cuda", dtype=flow.float16)
    return contextlib.nullcontext()
