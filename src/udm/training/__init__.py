"""Training (DESIGN: training/): the experiment, the trainer, EMA, atomic checkpoints, reflow and torchrun / DDP support."""

from . import reflow
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .ema import EMA
from .experiment import Experiment, build_data, load_trained
from .trainer import Trainer, read_log

__all__ = [
    "EMA",
    "Checkpoint",
    "CheckpointError",
    "Experiment",
    "Trainer",
    "build_data",
    "load_checkpoint",
    "load_trained",
    "read_log",
    "reflow",
    "save_checkpoint",
]
