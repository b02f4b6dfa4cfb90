"""A deterministic, resumable distributed sampler."""
import numpy as np

from .dataset import DataError


class ResumableDistributedSampler:
    """Indices of one data-parallel rank's shard of an epoch.

    The epoch order is a permutation drawn from ``(seed, epoch)`` (NumPy ``default_rng([seed, epoch])``, the
    same on every rank; ``shuffle=False``: ``0..length-1``). Global batch ``k`` is positions
    ``[k * world * batch_size, (k + 1) * world * batch_size)`` of that order, and rank ``r`` takes its ``r``-th
    block of ``batch_size``: the ranks' shards are disjoint, and the ranks' local batches ``k`` stacked in rank
    order (``split(0)``) are, row for row, the batch ``k`` one process takes. So whatever is drawn per row of
    the global batch (drop-path masks) falls on the same sample in every layout.

    ``drop_last`` (training): the order is cut to a multiple of ``world * batch_size`` so every rank yields
    the same number of full batches (static shapes for nn.Graph). Without it (evaluation) nothing is cut;
    pad the dataset to a multiple of ``world * batch_size`` (:class:`~oneflow_posmlp.data.PaddedDataset`,
    whose ``valid`` flag lets metrics count each sample once).

    ``consumed`` is how many samples of its shard this rank has already trained on this epoch; iteration
    starts after them. DataLoader workers prefetch ahead of the training step, so the sampler cannot know
    what was consumed: the trainer sets it (``set_epoch(epoch, consumed)``) from its step count, which its
    checkpoint holds, so a resumed run continues with exactly the remaining order. ``state_dict()`` /
    ``load_state_dict()`` do the same for other callers (refusing a mid-epoch layout change).
    """

    def __init__(self, length, rank=0, world=1, batch_size=1, shuffle=True, drop_last=True, seed=0):
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is outside the {world} data-parallel ranks")
        if length < world * batch_size and drop_last:
            raise DataError(f"{length} samples cannot fill one global batch of {world} ranks x {batch_size}; "
                             f"lower train.batch_size or add data")
        self.length, self.rank, self.world, self.batch_size = length, rank, world, batch_size
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.epoch, self.consumed = 0, 0

    def _indices(self):
        idx = np.random.default_rng([self.seed, self.epoch]).permutation(self.length) if self.shuffle \
            else np.arange(self.length)
        if self.drop_last:
            idx = idx[: self.length // (self.world * self.batch_size) * self.world * self.batch_size]
        b, step = self.batch_size, self.world * self.batch_size
        blocks = [idx[start + self.rank * b: start + (self.rank + 1) * b] for start in range(0, len(idx), step)]
        return np.concatenate(blocks) if blocks else idx

    def __len__(self):
        """Samples of this rank's whole shard this epoch (``consumed`` included)."""
        b, step = self.batch_size, self.world * self.batch_size
        whole = self.length // step * b
        if self.drop_last:
            return whole
        return whole + min(max(self.length % step - self.rank * b, 0), b)

    def num_batches(self):
        """Batches of this rank's whole shard this epoch."""
        n = len(self)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch, consumed=0):
        if not 0 <= consumed <= len(self):
            raise ValueError(f"consumed={consumed} is outside this rank's shard of {len(self)} samples")
        self.epoch, self.consumed = epoch, consumed

    def __iter__(self):
        return iter(self._indices()[self.consumed:].tolist())

    def state_dict(self):
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed, "length": self.length,
                "world": self.world, "batch_size": self.batch_size}

    def load_state_dict(self, state):
        """Restore epoch and position. Mid-epoch (``consumed > 0``) the data set size, the data-parallel degree
        and the local batch must be those of the saved run, else the remaining order would differ."""
        consumed = state["consumed"]
        if consumed:
            saved = {k: state[k] for k in ("length", "world", "batch_size") if k in state}
            now = {"length": self.length, "world": self.world, "batch_size": self.batch_size}
            diff = {k: (v, now[k]) for k, v in saved.items() if v != now[k]}
            if diff:
                raise DataError(f"cannot resume mid-epoch: the data order was saved with "
                                 + ", ".join(f"{k}={a}" for k, (a, _) in diff.items()) + " but this run has "
                                 + ", ".join(f"{k}={b}" for k, (_, b) in diff.items())
                                 + "; resume with the same data, ranks and batch size, or from an epoch-end checkpoint")
        self.seed = state["seed"]
        self.set_epoch(state["epoch"], consumed)
