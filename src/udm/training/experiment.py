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

from ..config import ConfigError, options
from ..data import Dataset, load_dataset
from ..denoiser import Denoiser
from ..losses import DenoisingLoss
from ..nets import NETWORKS
from ..processes import Process, get_process


@dataclass
class Experiment:
    """Everything one config describes; ``config`` has the network options resolved."""

    config: dict[str, Any]
    process: Process
    net: nn.Module
    denoiser: Denoiser
    loss: DenoisingLoss
    train_data: Dataset | None = None
    test_data: Dataset | None = None


def build_data(config: dict[str, Any]) -> tuple[Dataset, Dataset]:
    """The train and held-out splits of ``config['data']`` (deterministic in ``config['seed']``)."""
    data = load_dataset(config["data"]["name"], **options(config["data"], "test_fraction"))
    return data.split(config["data"]["test_fraction"], seed=config["seed"])


def default_time_scale(process: Process, prediction: str) -> float:
    """Map the network's time input to about [0, 1000], the range sinusoidal embeddings are tuned for.

    The raw time t spans [0, t_max]; EDM's preconditioned input c_noise = log(sigma~)/4
    spans about [-1.6, 1.1], so it is scaled by 250 (the span of EDM's own VP/VE variants).
    """
    return 250.0 if prediction == "edm" else 1000.0 / process.t_max


def resolve_network(config: dict[str, Any], shape: tuple[int, ...], num_classes: int | None = None) -> dict[str, Any]:
    """``config['network']`` with shape-dependent options and time_scale filled in where the network takes them."""
    section = dict(config["network"])
    params = inspect.signature(NETWORKS.get(section["name"])).parameters
    process = get_process(config["process"]["name"], **options(config["process"]))
    auto = {
        "shape": list(shape),
        "in_channels": shape[0] if len(shape) == 3 else None,
        "image_size": shape[-1] if len(shape) == 3 else None,
        "time_scale": default_time_scale(process, config["prediction"]["name"]),
    }
    for key, value in auto.items():
        if key in params and key not in section and value is not None:
            section[key] = value
    return section


def build_model(config: dict[str, Any]) -> tuple[Process, nn.Module, Denoiser]:
    """Process, network and denoiser from a config whose network options are resolved."""
    process = get_process(config["process"]["name"], **options(config["process"]))
    net_opts = options(config["network"])
    try:
        net = NETWORKS.get(config["network"]["name"])(**net_opts)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"network {config['network']['name']!r} cannot be built from the config: {e}") from e
    denoiser = Denoiser(net, process, config["prediction"]["name"], **options(config["prediction"]))
    return process, net, denoiser


def build_experiment(config: dict[str, Any], with_data: bool = True) -> Experiment:
    """Load the data, resolve the network against it, build everything, and dry-run one batch.

    The dry run turns "wrong data shape for the network" into one ConfigError
    naming both shapes, before any file is written.
    """
    config = copy.deepcopy(config)
    train = test = None
    if with_data:
        train, test = build_data(config)
        config["network"] = resolve_network(config, tuple(train.shape), train.num_classes)
    process, net, denoiser = build_model(config)
    loss = DenoisingLoss(config["loss"]["weighting"], config["loss"]["time_sampler"], config["loss"]["gamma"])
    if train is not None:
        conditional = getattr(net, "num_classes", None) is not None
        if conditional and train.y is None:
            raise ConfigError(
                f"network {config['network']['name']!r} has a class embedding (num_classes) but data {train.name!r} has no labels"
            )
        x = train.x[:2]
        t = torch.full((x.shape[0],), 0.5 * (process.t_eps + process.t_max), dtype=torch.float64)
        cond = train.y[:2] if conditional else None
        try:
            with torch.no_grad():
                denoiser.raw(x, t, cond)
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
