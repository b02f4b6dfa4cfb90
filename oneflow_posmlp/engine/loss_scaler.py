"""Dynamic loss scaling for eager mixed precision (OneFlow 0.9's ``flow.amp.GradScaler`` serves nn.Graph only)."""
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

    def unscale(self, params):
        """Divide the gradients by the scale; return whether they are all finite as a device flag (a float
        scalar, 1 or 0: one reduction over all of them, not read here), or None when disabled. Call
        :meth:`update` with the flag's value once it is read."""
        if not self.enabled:
            return None
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return flow.ones(1)
        inv = 1.0 / self.scale
        for g in grads:
            g.mul_(inv)
        first = grads[0]
        sums = [_beside(g.abs().sum().to(flow.float32), first) for g in grads]
        return flow.isfinite(flow.stack(sums).sum()).to(flow.float32)

    def unscale_and_check(self, params):
        """:meth:`unscale`, its flag read (one host read) and :meth:`update`d; False: skip the step."""
        flag = self.unscale(params)
        if flag is None:
            return True
        finite = bool(flag.numpy().reshape(-1)[0])
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


def _beside(t, ref):
    """Scalar ``t`` where ``ref``'s sum is (a gradient of another pipeline stage moves to ``ref``'s placement)."""
    if t.is_global:
        return t.to_global(placement=ref.placement, sbp=[flow.sbp.broadcast] * len(ref.sbp))
    return t


def autocast(enabled, device):
    """``flow.autocast`` on CUDA when enabled, else a no-op context."""
    import contextlib

    if enabled and device == "cuda":
        return flow.autocast(device_type="cuda", dtype=flow.float16)
    return contextlib.nullcontext()
