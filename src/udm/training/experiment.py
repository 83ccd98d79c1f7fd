"""From a validated config to the objects of one experiment: data, process, network, denoiser, loss.

The network's data-dependent options (``shape``, ``in_channels``,
``image_size``) and its ``time_scale`` are filled in from the data and the
process when the config leaves them out, and written back into the config, so
a checkpoint's config alone rebuilds the model without touching the data.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..classifier import NoisyClassifier
from ..config import ConfigError, options
from ..data import Dataset, load_dataset
from ..denoiser import PARAMETERIZATIONS, make_denoiser
from ..losses import Objective, make_loss
from ..nets import NETWORKS
from ..processes import PROCESSES, Process, get_process


@dataclass
class Experiment:
    """Everything one config describes; ``config`` has the network options resolved."""

    config: dict[str, Any]
    process: Process
    net: nn.Module
    denoiser: nn.Module
    loss: Objective
    train_data: Dataset | None = None
    test_data: Dataset | None = None


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


def _fill(section: dict[str, Any], factory: Any, auto: dict[str, Any]) -> dict[str, Any]:
    """``section`` with each ``auto`` value set where ``factory`` takes that option and the section leaves it out."""
    params = inspect.signature(factory).parameters
    for key, value in auto.items():
        if key in params and key not in section and value is not None:
            section[key] = value
    return section


def resolve_process(config: dict[str, Any], data: Dataset) -> dict[str, Any]:
    """``config['process']`` with data-dependent options filled in (written back, so checkpoints rebuild it).

    Token processes take ``vocab_size`` and ``seq_len`` from token data; a
    process with a fitted prior (the cold processes' Gaussian mixture over
    per-channel means, THEORY §4.2) fits it on the training data here.
    """
    section = _fill(
        dict(config["process"]),
        PROCESSES.get(config["process"]["name"]),
        {
            "vocab_size": data.vocab_size,
            "seq_len": data.shape[0] if data.kind == "tokens" else None,
            "image_size": data.shape[-1] if data.kind == "image" else None,
        },
    )
    process = get_process(section["name"], **options(section))
    fit = getattr(process, "fit_prior", None)
    if fit is not None and not getattr(process, "has_prior", True):
        section.update(fit(data.x, seed=config["seed"]))
    return section


def resolve_network(config: dict[str, Any], shape: tuple[int, ...], num_classes: int | None = None) -> dict[str, Any]:
    """``config['network']`` with shape-dependent options and time_scale filled in where the network takes them.

    Token networks get ``seq_len`` from the data and ``vocab_size`` from what
    the process feeds them (``input_vocab_size``: V + 1 with the mask token).
    """
    process = get_process(config["process"]["name"], **options(config["process"]))
    vocab = getattr(process, "input_vocab_size", getattr(process, "vocab_size", None))
    auto = {
        "shape": list(shape),
        "in_channels": shape[0] if len(shape) == 3 else None,
        "image_size": shape[-1] if len(shape) == 3 else None,
        "time_scale": default_time_scale(process, config["prediction"]["name"]),
        "vocab_size": vocab,
        "seq_len": shape[0] if len(shape) == 1 and vocab is not None else None,
        "latent_dim": getattr(process, "latent_dim", None),
    }
    return _fill(dict(config["network"]), NETWORKS.get(config["network"]["name"]), auto)


def wrap_network(net: nn.Module, process: Process, config: dict[str, Any]) -> nn.Module:
    """The model a config trains around ``net``: a noise-aware classifier or a denoiser in its parameterization."""
    if config["loss"]["objective"] == "classification":
        return NoisyClassifier(net, process)
    return make_denoiser(net, process, config["prediction"]["name"], **options(config["prediction"]))


def build_model(config: dict[str, Any]) -> tuple[Process, nn.Module, nn.Module]:
    """Process, network and model (a denoiser, or a classifier) from a config whose network options are resolved."""
    process = get_process(config["process"]["name"], **options(config["process"]))
    net_opts = options(config["network"])
    try:
        net = NETWORKS.get(config["network"]["name"])(**net_opts)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"network {config['network']['name']!r} cannot be built from the config: {e}") from e
    bound = getattr(process, "bound", None)
    if bound is not None:
        process = bound(net)
    return process, net, wrap_network(net, process, config)


def build_experiment(config: dict[str, Any], with_data: bool = True) -> Experiment:
    """Load the data, resolve the network against it, build everything, and dry-run one batch.

    The dry run turns "wrong data shape for the network" into one ConfigError
    naming both shapes, before any file is written.
    """
    config = copy.deepcopy(config)
    train = test = None
    if with_data:
        train, test = build_data(config)
        config["process"] = resolve_process(config, train)
        config["network"] = resolve_network(config, tuple(train.shape), train.num_classes)
    process, net, denoiser = build_model(config)
    lc = config["loss"]
    loss = make_loss(
        config["prediction"]["name"], lc["weighting"], lc["time_sampler"], lc["gamma"], lc["norm"], lc["objective"], lc["points"]
    )
    if train is not None:
        if getattr(net, "num_classes", None) is not None and train.y is None:
            raise ConfigError(
                f"network {config['network']['name']!r} has classes (num_classes) but data {train.name!r} has no labels"
            )
        x0 = train.x[:2]
        t = torch.full((x0.shape[0],), float(process.t_max), dtype=torch.float64)
        cond = train.y[:2] if getattr(net, "null_class", None) is not None else None
        try:
            with torch.no_grad():
                dtype = x0.dtype if x0.is_floating_point() else torch.float32
                eps = process.sample_noise(process.state_shape(x0.shape), torch.Generator().manual_seed(0), dtype=dtype)
                x_t = process.corrupt(x0, t, eps)
        except (ValueError, RuntimeError) as e:
            raise ConfigError(
                f"process {config['process']['name']!r} cannot take data {train.name!r} of per-sample shape {tuple(train.shape)}: {e}"
            ) from e
        try:
            with torch.no_grad():
                denoiser.raw(x_t, t, cond)
        except (ValueError, RuntimeError) as e:
            raise ConfigError(
                f"data {train.name!r} has per-sample shape {tuple(train.shape)} but network {config['network']['name']!r} "
                f"does not accept it: {e}"
            ) from e
    return Experiment(config, process, net, denoiser, loss, train, test)


def load_trained(path: str, use_ema: bool = True, device: str | torch.device | None = None):
    """(denoiser, checkpoint) from a checkpoint, checkpoints folder or run folder; EMA weights by default.

    Only the checkpoint is read (its config rebuilds the model), through
    safetensors and JSON: nothing is unpickled.
    """
    from .checkpoint import load_checkpoint, load_module_state

    group = "ema" if use_ema else "model"
    ckpt = load_checkpoint(path)
    if group not in ckpt.tensors:
        group = "model"
    _, net, denoiser = build_model(ckpt.config)
    load_module_state(net, ckpt.tensors[group], group)
    denoiser.to(device or "cpu").eval()
    return denoiser, ckpt
