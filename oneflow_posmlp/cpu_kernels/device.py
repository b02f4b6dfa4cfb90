"""Which tensors a CPU kernel takes (every other input runs the model's own, official form)."""


def on_cpu(x):
    """True for a local CPU tensor or a global tensor on a CPU placement."""
    return x.placement.type == "cpu" if x.is_global else not x.is_cuda
