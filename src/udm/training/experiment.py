"""One experiment, built once: its data, process, network, objective, and the model that wraps a network.

:meth:`Experiment.from_config` validates a config, loads the data, fills in
what depends on it (the network's ``shape``, ``in_channels``, ``image_size``,
``seq_len`` and ``time_scale``; the process's vocabulary and fitted prior;
what the process dictates to the network through ``network_options``) and
writes it back into the config, so a checkpoint's config alone rebuilds the
model without touching the data. It builds the process, the network and the
objective once each and dry-runs one batch, so "this network cannot take this
data" is one ConfigError before anything is written.
:meth:`Experiment.from_run` rebuilds the same from a checkpoint and loads its
weights. :meth:`Experiment.model` wraps a network (the plain one, its DDP or
compiled form, its EMA copy) as the objective's model, with the process bound
to it. The trainer, ``udm sample``, ``udm eval``, the reflow data set and the
demo all start from an Experiment.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import options, validate
from ..errors import ConfigError, DivergedError
from ..data import Dataset, load_dataset
from ..denoiser import PARAMETERIZATIONS
from ..losses import Loss
from ..nets import NETWORKS
from ..objectives import OBJECTIVES, Objective
from ..processes import PROCESSES, Process, get_process
from .checkpoint import Checkpoint, load_checkpoint, load_module_state


def build_data(config: dict[str, Any]) -> tuple[Dataset, Dataset]:
    """The train and held-out splits of ``config['data']`` (deterministic in ``config['seed']``)."""
    data = load_dataset(config["data"]["name"], **options(config["data"], "test_fraction"))
    return data.split(config["data"]["test_fraction"], seed=config["seed"])


def default_time_scale(process: Process, prediction: str) -> float:
    """Map the network's time input to about [0, 1000], the range sinusoidal embeddings are tuned for.

    The raw time t spans [0, t_max]; a parameterization that preconditions its
    time input (EDM's c_noise = log(sigma~)/4, PFGM's log(z)/4) says its own scale.
    """
    scale = PARAMETERIZATIONS.get(prediction).time_scale
    return scale if scale is not None else 1000.0 / process.t_max


def _fill(section: dict[str, Any], factory: Callable[..., Any], auto: dict[str, Any]) -> dict[str, Any]:
    """``section`` with each ``auto`` value set where ``factory`` takes that option and the section leaves it out."""
    params = inspect.signature(factory).parameters
    for key, value in auto.items():
        if key in params and key not in section and value is not None:
            section[key] = value
    return section


def _data_options(data: Dataset) -> dict[str, Any]:
    """What a process may take from its data: token vocabulary and length, image size."""
    return {
        "vocab_size": data.vocab_size,
        "seq_len": data.shape[0] if data.kind == "tokens" else None,
        "image_size": data.shape[-1] if data.kind == "image" else None,
    }


def _network_options(process: Process, shape: tuple[int, ...], prediction: str) -> dict[str, Any]:
    """What a network may take from the data shape, the parameterization's time scale and the process."""
    image = len(shape) == 3
    return {
        "shape": list(shape),
        "in_channels": shape[0] if image else None,
        "image_size": shape[-1] if image else None,
        "seq_len": shape[0] if len(shape) == 1 else None,
        "time_scale": default_time_scale(process, prediction),
        **process.network_options(),
    }


def describe_data(data: Dataset) -> dict[str, Any]:
    """What checkpoints record of the data: enough to sample (shape, classes) and to show samples (kind, vocabulary)."""
    return {
        "name": data.name,
        "shape": list(data.shape),
        "num_classes": data.num_classes,
        "kind": data.kind,
        "vocab_size": data.vocab_size,
        "vocab": data.vocab,
        "image_shape": None if data.image_shape is None else list(data.image_shape),
    }


@dataclass
class Experiment:
    """Everything one config describes, each piece built once; ``config`` has every data-dependent option resolved.

    ``data`` is the per-sample data description recorded in checkpoints
    (``name``, ``shape``, ``num_classes``). ``train_data``/``test_data`` are
    loaded by :meth:`from_config` (and on demand by :meth:`splits`);
    ``checkpoint`` is set by :meth:`from_run`.
    """

    config: dict[str, Any]
    process: Process
    net: nn.Module
    objective: Objective
    data: dict[str, Any]
    train_data: Dataset | None = None
    test_data: Dataset | None = None
    checkpoint: Checkpoint | None = None

    @property
    def loss(self) -> Loss:
        """The objective's loss (its time sampler carries the state a checkpoint saves)."""
        return self.objective.loss

    @property
    def shape(self) -> tuple[int, ...]:
        """One data sample's shape (what samplers draw, batch axis excluded)."""
        return tuple(self.data["shape"])

    @property
    def conditional(self) -> bool:
        """True when the network reads class labels (a class-conditional denoiser, or a classifier's targets)."""
        return self.net.num_classes is not None

    def model(self, module: nn.Module | None = None, forward: Callable[..., torch.Tensor] | None = None) -> nn.Module:
        """The objective's model of the weights ``module`` (default: the network), with the process bound to them.

        ``forward`` is what the model calls instead of ``module`` itself, e.g. its
        DistributedDataParallel or ``torch.compile`` wrapper; the process binds
        to ``module`` (the encoder model's F is ``module.encoder``, THEORY §4.5).
        """
        module = self.net if module is None else module
        return self.objective.model(module if forward is None else forward, self.process.bind(module))

    def splits(self) -> tuple[Dataset, Dataset]:
        """(train, held-out) data, loaded once."""
        if self.train_data is None or self.test_data is None:
            self.train_data, self.test_data = build_data(self.config)
        return self.train_data, self.test_data

    @classmethod
    def from_config(cls, config: dict[str, Any], *, with_data: bool = True) -> Experiment:
        """Validate ``config``, load its data, resolve what depends on it, build everything once and dry-run a batch.

        ``with_data=False`` builds from a config whose data-dependent options are
        already resolved (a checkpoint's), without loading the data.
        """
        config = validate(copy.deepcopy(config))
        train = test = None
        if with_data:
            train, test = build_data(config)
            _fill(config["process"], PROCESSES.get(config["process"]["name"]), _data_options(train))
        process = _build("process", config["process"], get_process)
        if train is not None:
            config["process"].update(process.fit(train.x, seed=config["seed"]))
            _fill(config["network"], NETWORKS.get(config["network"]["name"]),
                  _network_options(process, tuple(train.shape), config["prediction"]["name"]))
        net = _build("network", config["network"], lambda name, **kw: NETWORKS.get(name)(**kw))
        objective = OBJECTIVES.get(config["loss"]["objective"])(config["prediction"], config["loss"])
        try:
            objective.check_process(process)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        data = describe_data(train) if train is not None else {}
        exp = cls(config, process, net, objective, data, train, test)
        if train is not None:
            exp._dry_run(train)
        return exp

    @classmethod
    def from_run(cls, path: str, *, use_ema: bool = True, device: str | torch.device | None = None) -> Experiment:
        """The experiment of a checkpoint, checkpoints folder or run folder, with its weights (EMA by default) in eval mode.

        Only the checkpoint is read (its config rebuilds the model), through
        safetensors and JSON: nothing is unpickled. The data is not loaded
        (:meth:`splits` loads it).
        """
        ckpt = load_checkpoint(path)
        exp = cls.from_config(ckpt.config, with_data=False)
        group = "ema" if use_ema and "ema" in ckpt.tensors else "model"
        load_module_state(exp.net, ckpt.tensors[group], group)
        bad = [name for name, p in exp.net.state_dict().items() if p.is_floating_point() and not bool(p.isfinite().all())]
        if bad:
            raise DivergedError(
                f"checkpoint {ckpt.path} holds non-finite {group} weights ({bad[0]}): its training diverged; "
                "sample an earlier checkpoint or retrain with a lower train.lr"
            )
        exp.net.to(device or "cpu").eval()
        exp.data, exp.checkpoint = ckpt.meta["data"], ckpt
        return exp

    def _dry_run(self, train: Dataset) -> None:
        """Corrupt two training samples to t_max and run the model on them; shape mistakes become one ConfigError."""
        if self.conditional and train.y is None:
            raise ConfigError(f"network {self.config['network']['name']!r} has classes (num_classes) but data {train.name!r} has no labels")
        model = self.model()
        x0 = train.x[:2]
        t = torch.full((x0.shape[0],), float(self.process.t_max), dtype=torch.float64)
        cond = train.y[:2] if self.net.null_class is not None else None
        try:
            with torch.no_grad():
                dtype = x0.dtype if x0.is_floating_point() else torch.float32
                eps = model.process.sample_noise(model.process.state_shape(x0.shape), torch.Generator().manual_seed(0), dtype=dtype)
                x_t = model.process.corrupt(x0, t, eps)
        except (ValueError, RuntimeError) as e:
            raise ConfigError(
                f"process {self.config['process']['name']!r} cannot take data {train.name!r} of per-sample shape {tuple(train.shape)}: {e}"
            ) from e
        try:
            with torch.no_grad():
                model.raw(x_t, t, cond)
        except (ValueError, RuntimeError) as e:
            raise ConfigError(
                f"data {train.name!r} has per-sample shape {tuple(train.shape)} but network {self.config['network']['name']!r} "
                f"does not accept it: {e}"
            ) from e


def _build(kind: str, section: dict[str, Any], make: Callable[..., Any]) -> Any:
    """``make(name, **options)`` of a config section, a mistake in the options reported as a ConfigError."""
    try:
        return make(section["name"], **options(section))
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(f"{kind} {section['name']!r} cannot be built from the config: {e}; fix the values of config section '{kind}'") from e


def load_trained(path: str, use_ema: bool = True, device: str | torch.device | None = None) -> tuple[nn.Module, Checkpoint]:
    """(model, checkpoint) of a run: :meth:`Experiment.from_run`'s model, for scripts that need nothing else."""
    exp = Experiment.from_run(path, use_ema=use_ema, device=device)
    return exp.model().eval(), exp.checkpoint
