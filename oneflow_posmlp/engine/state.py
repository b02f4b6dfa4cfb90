"""Training checkpoints: everything needed to continue a run exactly, written atomically by rank 0.

Format: a ``flow.save`` directory (tensors in their own files, the rest in a pickle). It is read back by the
restricted reader (:func:`~oneflow_posmlp.checkpoint.read_oneflow_checkpoint`), never by ``flow.load``: a
checkpoint can only hold tensors, numbers, strings and containers, so a hostile one is refused, not run.
"""
import contextlib
import os
import random

import numpy as np
import oneflow as flow

from ..checkpoint.atomic import atomic_path
from ..checkpoint.errors import CheckpointError, disk_full_error
from ..checkpoint.oneflow_reader import is_oneflow_checkpoint, read_oneflow_checkpoint
from ..checkpoint.weights import with_version
from .stop import any_rank


def rng_state():
    """The host generators: Python's, NumPy's global one and OneFlow's default CPU generator.

    The CUDA generators are not saved, on purpose: every draw on a CUDA device on the training path (dropout)
    comes after ``flow.manual_seed`` of its micro-batch (``engine/randomness.py``), and ``flow.manual_seed``
    reseeds OneFlow's auto generator, which owns the CPU and every CUDA generator (OneFlow 0.9.0,
    ``core/framework/random_generator.cpp``: ``ManualSeed`` -> ``AutoGeneratorImpl::set_current_seed``,
    generators created later take its seed), so a resumed run draws what the uninterrupted one drew without
    their state. OneFlow 0.9.0 has no ``flow.cuda.get_rng_state`` (calling it ended every run on a GPU host in
    its first epoch), and ``flow.Generator("cuda")`` aborts the process where the driver is missing.

    The OneFlow entry is exact only from a ``flow.manual_seed`` on: in OneFlow 0.9.0, after a
    ``flow.set_rng_state`` the default generator's ``get_state`` keeps reporting the state that was set while
    draws move on, until the next ``flow.manual_seed`` (checked by hand: get, draw, set, draw, get). The training
    path reseeds every micro-batch, so no draw that a resume must repeat depends on it."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "oneflow": flow.get_rng_state()}


@contextlib.contextmanager
def rng_preserved():
    """Run a block without moving the Python/NumPy/OneFlow RNGs (e.g. creating a DataLoader iterator)."""
    saved = rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)


def set_rng_state(state):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    flow.set_rng_state(state["oneflow"])  # a "cuda" entry (never written by OneFlow 0.9.0) is ignored: rng_state()


def state_nbytes(obj):
    """Bytes of the tensors and arrays in ``obj`` (recursively): the size of a checkpoint, give or take its pickle."""
    if isinstance(obj, flow.Tensor):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(state_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_nbytes(v) for v in obj)
    return 0


def save_training_state(path, state, ctx):
    """``state`` (model/ema/optimizer state dicts, scaler, counters, RNG, config, class names), with
    ``posmlp_version`` (the version writing it), to the directory ``path``: written by rank 0 under a temporary
    name, then renamed; other ranks wait.

    A write that fails (a full disk, ...) leaves an existing ``path`` as it was and raises the same
    :class:`CheckpointError` on every rank (a full disk names the path and the space needed)."""
    state = ctx.gather(with_version(state))  # a collective: every rank takes part, rank 0 writes
    failure = None
    if ctx.is_main:
        try:
            with atomic_path(path) as tmp:
                flow.save(state, tmp)
        except OSError as err:
            failure = disk_full_error(err, path, state_nbytes(state)) or CheckpointError(
                f"cannot write the checkpoint {path} ({err}); an existing {os.path.basename(path)} is unchanged")
    if any_rank([failure is not None], ctx)[0]:  # also the barrier: rank 0 has finished writing
        raise failure or CheckpointError(f"rank 0 could not write the checkpoint {path} (see its error)")


def load_training_state(path, cfg):
    """Load a training checkpoint (restricted reader: nothing in it runs) and check that it belongs to the same
    model architecture."""
    path = str(path)
    if not is_oneflow_checkpoint(path):
        raise CheckpointError(f"--resume {path}: not a training checkpoint directory (no pickled_data); pass the "
                              f"'last' or 'best' directory of a run, or use --init for converted weights")
    state = read_oneflow_checkpoint(path)
    if not isinstance(state, dict) or not all(k in state for k in ("model", "optimizer", "rng", "epoch")):
        raise CheckpointError(f"--resume {path}: not a training checkpoint (it lacks model/optimizer/rng/epoch); "
                              f"use --init for converted weights")
    saved_model = state["config"].get("model") if isinstance(state.get("config"), dict) else None
    if isinstance(saved_model, dict):
        diff = {k for k in set(saved_model) | set(cfg["model"]) if k not in ("drop_path_rate", "drop_rate", "name")
                and saved_model.get(k) != cfg["model"].get(k)}
        if diff:
            k = sorted(diff)[0]
            raise CheckpointError(f"--resume {path}: the checkpoint is of another model (model.{k}: checkpoint "
                                  f"{saved_model.get(k)!r}, config {cfg['model'].get(k)!r}); resume with the "
                                  f"config it was trained with")
    return state
