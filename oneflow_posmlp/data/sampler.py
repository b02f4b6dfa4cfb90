"""A deterministic, resumable distributed sampler."""
import numpy as np


class ResumableDistributedSampler:
    """Epoch permutation from ``seed + epoch``; rank ``r`` of ``world`` takes every ``world``-th index.

    ``drop_last`` (training): the permutation is cut to a multiple of ``world * batch`` so every rank
    yields the same number of full batches (static shapes for nn.Graph). Without it (evaluation) the
    indices run in order, and the dataset should be padded to a multiple of ``world * batch``.
    ``state_dict()`` holds ``epoch`` and ``consumed`` (samples this rank already yielded this epoch), so a
    resumed run continues with exactly the remaining order.
    """

    def __init__(self, length, rank=0, world=1, batch_size=1, shuffle=True, drop_last=True, seed=0):
        if length < world * batch_size and drop_last:
            raise ValueError(f"{length} samples cannot fill one global batch of {world} x {batch_size}; "
                             f"lower train.batch_size or add data")
        self.length, self.rank, self.world, self.batch_size = length, rank, world, batch_size
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.epoch, self.consumed = 0, 0

    def _indices(self):
        idx = np.random.default_rng(self.seed + self.epoch).permutation(self.length) if self.shuffle \
            else np.arange(self.length)
        if self.drop_last:
            idx = idx[: self.length // (self.world * self.batch_size) * self.world * self.batch_size]
        return idx[self.rank:: self.world]

    def __len__(self):
        return len(self._indices())

    def num_batches(self):
        n = len(self)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch, consumed=0):
        self.epoch, self.consumed = epoch, consumed

    def __iter__(self):
        return iter(self._indices()[self.consumed:].tolist())

    def state_dict(self):
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed}

    def load_state_dict(self, state):
        self.epoch, self.consumed, self.seed = state["epoch"], state["consumed"], state["seed"]
