"""Training checkpoints: everything needed to continue a run exactly, written atomically by rank 0."""
import os
import random

import numpy as np
import oneflow as flow

from ..checkpoint.atomic import atomic_path
from ..checkpoint.errors import CheckpointError


def rng_state():
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "oneflow": flow.get_rng_state()}
    if flow.cuda.is_available():
        state["cuda"] = flow.cuda.get_rng_state()
    return state


def set_rng_state(state):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    flow.set_rng_state(state["oneflow"])
    if "cuda" in state and flow.cuda.is_available():
        flow.cuda.set_rng_state(state["cuda"])


def save_training_state(path, state, ctx):
    """``state`` (model/ema/optimizer state dicts, scheduler, scaler, counters, RNG, sampler, config) to the
    directory ``path``: written by rank 0 under a temporary name, then renamed; other ranks wait."""
    state = ctx.gather(state)  # a collective: every rank takes part, rank 0 writes
    if ctx.is_main:
        with atomic_path(path) as tmp:
            flow.save(state, tmp)
    ctx.barrier()


def load_training_state(path, cfg):
    """Load a training checkpoint and check that it belongs to the same model architecture."""
    path = str(path)
    if not os.path.isfile(os.path.join(path, "pickled_data")):
        raise CheckpointError(f"--resume {path}: not a training checkpoint directory (no pickled_data); pass the "
                              f"'last' or 'best' directory of a run, or use --init for converted weights")
    state = flow.load(path)
    saved_model = state.get("config", {}).get("model")
    if saved_model is not None:
        diff = {k for k in set(saved_model) | set(cfg["model"]) if k not in ("drop_path_rate", "drop_rate", "name")
                and saved_model.get(k) != cfg["model"].get(k)}
        if diff:
            k = sorted(diff)[0]
            raise CheckpointError(f"--resume {path}: the checkpoint is of another model (model.{k}: checkpoint "
                                  f"{saved_model.get(k)!r}, config {cfg['model'].get(k)!r}); resume with the "
                                  f"config it was trained with")
    return state
