"""Training engine: the trainer, evaluation metrics, logging, loss scaling and training checkpoints."""
from .trainer import Trainer

__all__ = ["Trainer"]
