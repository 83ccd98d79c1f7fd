"""Where ``udm sample`` and ``udm eval`` get a model: a udm run, or a foreign model folder (docs/interop.md).

Both are read into one :class:`ModelSource`: the denoiser (built once), one
sample's shape, the label set, the sampling defaults, the data description
used to write samples, and what to record about where the model came from. The
commands then treat a diffusers folder exactly as a udm run: every sampler,
grid, guidance and likelihood works on either.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from torch import nn

from .config import SAMPLE_DEFAULTS
from .data import Dataset, load_dataset
from .errors import ConfigError
from .processes.base import Process

#: The held-out share and split seed of ``--data`` for a foreign model (a udm run keeps its own).
FOREIGN_TEST_FRACTION, FOREIGN_SPLIT_SEED = 0.1, 0
#: Steps of a foreign model's own scheduler when ``--steps`` is not given (diffusers pipelines' common default is 50).
FOREIGN_STEPS = 50


@dataclass
class ModelSource:
    """A model ready to sample or score, and what the commands need to know about it.

    ``sample`` holds the defaults of ``--sampler``, ``--steps``, ``--grid`` (a
    ``GRIDS`` name or ``steps -> times``), the sampler options, ``n`` and
    ``eval_n``. ``provenance`` is recorded with samples and metrics;
    ``generative`` is False for a classifier run (it guides, it draws nothing);
    ``note`` is a remark to show before the model is used (e.g. young EMA weights);
    ``process_config`` describes the process (a classifier must have been trained on the same one).
    """

    name: str
    model: nn.Module
    process: Process
    process_config: dict[str, Any]
    shape: tuple[int, ...]
    num_classes: int | None
    sample: dict[str, Any]
    data: dict[str, Any]
    provenance: dict[str, Any]
    default_out: Path
    generative: bool = True
    run_kind: str = "model"
    note: str | None = None
    _splits: Callable[[], tuple[Dataset, Dataset]] | None = field(default=None, repr=False)

    def splits(self) -> tuple[Dataset, Dataset]:
        """(train, held-out) data to score against; a foreign model needs ``--data``."""
        if self._splits is None:
            raise ConfigError(f"{self.name} is not a udm run, so it has no data of its own; name a dataset with --data (see `udm list`)")
        return self._splits()


def from_run(path: str, *, use_ema: bool = True, device: str | None = None) -> ModelSource:
    """A udm run (checkpoint, checkpoints folder or run folder) as a source."""
    from .training import Experiment, ema_note_from_meta

    exp = Experiment.from_run(path, use_ema=use_ema, device=device)
    ckpt = exp.checkpoint
    note = ema_note_from_meta(ckpt.meta) if use_ema and "ema" in ckpt.tensors else None
    return ModelSource(
        name=path, model=exp.model(), process=exp.process, process_config=exp.config["process"], shape=exp.shape,
        num_classes=exp.net.num_classes,
        sample=dict(exp.config["sample"]), data=exp.data, provenance={"checkpoint": str(ckpt.path), "step": ckpt.step},
        default_out=ckpt.run_dir / f"samples_step{ckpt.step}", generative=exp.objective.generative,
        run_kind=exp.objective.run_kind, note=note or None, _splits=exp.splits,
    )


def from_folder(
    path: str, *, data: str | None = None, scheduler: str | None = None, trust_pickle: bool = False, device: str | None = None
) -> ModelSource:
    """A foreign model folder (:mod:`udm.interop`) as a source; ``data`` names the dataset ``udm eval`` scores against."""
    from .interop import load

    foreign = load(path, scheduler=scheduler, trust_pickle=trust_pickle, device=device)
    mapping = foreign.scheduler
    described = {"name": str(path), "shape": list(foreign.shape), "num_classes": foreign.num_classes, "kind": "image",
                 "vocab_size": None, "vocab": None, "image_shape": None}
    splits = None if data is None else _dataset_splits(data, foreign.shape)
    return ModelSource(
        name=path, model=foreign.denoiser, process=foreign.process,
        process_config={"name": foreign.process.name, **foreign.process.schedule.config()}, shape=foreign.shape,
        num_classes=foreign.num_classes,
        sample={**SAMPLE_DEFAULTS, "sampler": mapping.sampler, "steps": FOREIGN_STEPS, "grid": mapping.grid,
                "options": dict(mapping.sampler_options)},
        data=described, provenance={"source": str(path), **foreign.description},
        default_out=Path("samples") / Path(path).resolve().name, _splits=splits,
    )


def _dataset_splits(name: str, shape: tuple[int, ...]) -> Callable[[], tuple[Dataset, Dataset]]:
    """The splits of dataset ``name``, checked to have the model's sample shape."""

    def splits() -> tuple[Dataset, Dataset]:
        data = load_dataset(name)
        if tuple(data.shape) != tuple(shape):
            raise ConfigError(
                f"--data {name} has samples of shape {tuple(data.shape)} but the model draws {tuple(shape)}; "
                "name a dataset of the model's shape"
            )
        return data.split(FOREIGN_TEST_FRACTION, seed=FOREIGN_SPLIT_SEED)

    return splits

