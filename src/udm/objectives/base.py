"""The Objective noun: one registry entry per way of training a model (THEORY §3.2 U1, §2.2 G1, §6.2 P2).

An objective says everything the assembly layer (config, experiment, trainer,
CLI) needs to know about training with it, so none of them branches on its
name:

* its constructor checks the config's ``prediction`` and ``loss`` sections
  and builds the loss (a ValueError naming the key on a mistake): the one
  place these sections are validated;
* :meth:`Objective.model` wraps a network into the model the loss trains (a
  denoiser, a token denoiser, a noise-aware classifier);
* ``generative`` says whether that model draws samples, ``labels_condition``
  whether class labels are its condition (dropped to the null label for
  classifier-free guidance, THEORY §2.2 G4) or its targets, and
  ``network_predicts`` what the network must output (networks declare the
  same as ``predicts``).

A new objective is one file (its :class:`~udm.losses.Loss` and its
:class:`Objective`) and one ``OBJECTIVES.register`` line.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

from torch import nn

from ..denoiser import Denoiser
from ..losses import Loss
from ..processes.base import Process, require

#: Every ``loss.*`` config key with its default; an objective reads its own ``keys`` and refuses the rest if changed.
LOSS_DEFAULTS: dict[str, Any] = {
    "objective": "auto",
    "weighting": "target",
    "time_sampler": {"name": "uniform"},
    "gamma": 5.0,
    "norm": "l2",
    "points": None,
}


class Objective(ABC):
    """A training objective: its config check, its loss, and the model it trains (module docstring)."""

    name: ClassVar[str]
    #: The ``loss.*`` keys this objective reads; any other key must keep its default (LOSS_DEFAULTS).
    keys: ClassVar[tuple[str, ...]] = ("time_sampler",)
    #: True when the trained model draws samples (``udm sample``, ``udm eval``, ``train.sample_every``).
    generative: ClassVar[bool] = True
    #: What a run of this objective is called in messages ("a classifier run").
    run_kind: ClassVar[str] = "model"
    #: True when class labels condition the model; False when they are what it predicts.
    labels_condition: ClassVar[bool] = True
    #: What the network outputs: ``"x0"`` (a parameterization of x0, or logits over x0's tokens) or ``"y"`` (class logits).
    network_predicts: ClassVar[str] = "x0"
    #: The capabilities (``udm.processes.base`` protocols) the process must declare, with what to do when it does not.
    process_needs: ClassVar[tuple[tuple[type, str], ...]] = ()

    def __init__(self, prediction: Mapping[str, Any], loss: Mapping[str, Any] | None = None) -> None:
        """Check ``prediction`` ({name, **options}) and ``loss`` (``loss.*`` keys) and build the loss."""
        self.prediction = dict(prediction)
        self.options = {**LOSS_DEFAULTS, **(loss or {})}
        for key, default in LOSS_DEFAULTS.items():
            if key not in ("objective", *self.keys) and self.options[key] != default:
                raise ValueError(
                    f"objective {self.name!r} takes no loss {key} (loss.{key} = {self.options[key]!r}); "
                    f"its loss options: {', '.join(self.keys) or 'none'}"
                )
        self.loss: Loss = self.build_loss()

    def check_process(self, process: Process) -> None:
        """Refuse (ValueError) a process this objective cannot train on, naming what it lacks and what to do."""
        for capability, hint in self.process_needs:
            require(process, capability, f"objective {self.name!r} (prediction {self.prediction['name']!r})", hint)

    @classmethod
    def default_for(cls, prediction: str) -> bool:
        """True when ``loss.objective: auto`` means this objective for the prediction ``prediction``."""
        return False

    @abstractmethod
    def build_loss(self) -> Loss:
        """The loss, from ``self.prediction`` and ``self.options`` (its constructor validates them)."""

    def prediction_options(self) -> dict[str, Any]:
        """The prediction section's options (everything but its name)."""
        return {k: v for k, v in self.prediction.items() if k != "name"}

    def model(self, net: nn.Module, process: Process) -> nn.Module:
        """The model the loss trains around ``net``: a :class:`~udm.Denoiser` in the configured parameterization."""
        return Denoiser(net, process, self.prediction["name"], **self.prediction_options())
