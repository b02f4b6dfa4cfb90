"""The randomness of a training step, seeded from the step itself: ``(run seed, update, micro-batch)``.

Every random operation on the training path draws from generators seeded per micro-batch, so a run resumed
at any update draws exactly what the uninterrupted run drew (no generator state needs to survive a
checkpoint), and every parallel layout draws what it should:

* drop path: keep masks for the whole global batch from ``np.random.default_rng([seed, update, micro])``,
  identical on every rank; each rank takes its rows (``models/drop.py``). Equal to one process in every
  layout, eager and graph (a graph takes the masks as an input).
* dropout (and anything else drawing from OneFlow's default generator): ``flow.manual_seed`` from the same
  triple, identical on every rank (global ``broadcast`` draws must agree across ranks; ``split(0)`` draws
  differ by rank by OneFlow's design). Inside an ``nn.Graph`` the kernels keep the generator they were
  compiled with, so a graph's dropout masks after a resume are another draw (docs/parallel.md).
* Mixup/CutMix (flowvision, NumPy's global RNG, each rank mixing its local batch): seeded from the triple and
  the data-parallel rank, so data-parallel ranks draw independent lambdas and boxes (as the official
  per-rank-seeded DDP runs) and the tensor-parallel ranks of one shard agree.
* data augmentation in loader workers: per-sample seeds ``(seed, epoch, index)`` (``data/dataset.py``),
  independent of the layout.
"""
import contextlib

import numpy as np
import oneflow as flow

_FLOW, _NUMPY, _DROP_PATH = 0, 1, 2  # streams derived from one step


def _derive(seed, update, micro, stream, *extra):
    return int(np.random.SeedSequence([seed, update, micro, stream, *extra]).generate_state(1)[0])


def seed_oneflow(seed, update, micro):
    """Seed OneFlow's default generators (CPU and CUDA) for one micro-batch, alike on every rank."""
    flow.manual_seed(_derive(seed, update, micro, _FLOW))


@contextlib.contextmanager
def numpy_seeded(seed, update, micro, data_rank):
    """Run a block (flowvision's Mixup) with NumPy's global RNG seeded for this micro-batch and data shard,
    leaving the global RNG as it was."""
    saved = np.random.get_state()
    np.random.seed(_derive(seed, update, micro, _NUMPY, data_rank))
    try:
        yield
    finally:
        np.random.set_state(saved)


def drop_path_seed(seed, update, micro):
    """The seed of :func:`oneflow_posmlp.models.drop.drop_path_keep` for one micro-batch."""
    return [seed, update, micro, _DROP_PATH]
