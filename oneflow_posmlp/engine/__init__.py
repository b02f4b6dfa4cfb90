"""Training engine: the trainer, standalone evaluation, metrics, logging, loss scaling and training checkpoints."""
from .evaluate import evaluate, evaluate_weights
from .trainer import Trainer

__all__ = ["Trainer", "evaluate", "evaluate_weights"]
