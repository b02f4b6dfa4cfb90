"""Layout questions the model asks of a tensor (parallel forms, not device forms)."""
import oneflow as flow


def channels_split(x):
    """True for a global tensor split over ranks along its last (channel) axis: a gating unit's activations under
    the tensor-parallel ``groups`` plan (``parallel/tensor_parallel.py``), where each rank holds its channel
    groups; the token mixing and the LayerNorm then take forms that keep every rank on its own channels."""
    return x.is_global and any(s == flow.sbp.split(x.ndim - 1) for s in x.sbp)
