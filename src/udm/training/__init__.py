"""Training (DESIGN: training/): the experiment, the trainer, EMA, atomic checkpoints, the run lock, reflow and torchrun / DDP support."""

from . import reflow
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, remove_orphans, save_checkpoint
from .ema import EMA, ema_note_from_meta, ema_warmup_note
from .experiment import Experiment, build_data, load_trained
from .runlock import RunLock
from .trainer import StopRequests, Trainer, parse_log, read_log

__all__ = [
    "EMA",
    "Checkpoint",
    "CheckpointError",
    "Experiment",
    "RunLock",
    "StopRequests",
    "Trainer",
    "build_data",
    "ema_note_from_meta",
    "ema_warmup_note",
    "load_checkpoint",
    "load_trained",
    "parse_log",
    "read_log",
    "reflow",
    "remove_orphans",
    "save_checkpoint",
]
