"""Training (DESIGN: training/): the trainer, EMA, atomic checkpoints and torchrun / DDP support."""

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .ema import EMA
from .experiment import Experiment, build_data, build_experiment, build_model, load_trained
from .trainer import Trainer, read_log

__all__ = [
    "EMA",
    "Checkpoint",
    "CheckpointError",
    "Experiment",
    "Trainer",
    "build_data",
    "build_experiment",
    "build_model",
    "load_checkpoint",
    "load_trained",
    "read_log",
    "save_checkpoint",
]
