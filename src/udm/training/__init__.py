"""Training (DESIGN: training/): the experiment, the trainer, EMA and post-hoc EMA, atomic checkpoints, the run lock, reflow and torchrun / DDP support."""

from . import reflow
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, remove_orphans, save_checkpoint
from .ema import EMA, PowerEMA, ema_note_from_meta, ema_warmup_note, gamma_to_sigma_rel, sigma_rel_to_gamma
from .experiment import Experiment, build_data, load_trained
from .posthoc import PosthocEMA, Reconstruction, reconstruct_posthoc, write_posthoc
from .runlock import RunLock
from .trainer import StopRequests, Trainer, parse_log, read_log

__all__ = [
    "EMA",
    "Checkpoint",
    "CheckpointError",
    "Experiment",
    "PosthocEMA",
    "PowerEMA",
    "Reconstruction",
    "RunLock",
    "StopRequests",
    "Trainer",
    "build_data",
    "ema_note_from_meta",
    "ema_warmup_note",
    "gamma_to_sigma_rel",
    "load_checkpoint",
    "load_trained",
    "parse_log",
    "read_log",
    "reconstruct_posthoc",
    "reflow",
    "remove_orphans",
    "save_checkpoint",
    "sigma_rel_to_gamma",
    "write_posthoc",
]
