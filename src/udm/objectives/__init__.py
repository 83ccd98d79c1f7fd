"""Training objectives (``OBJECTIVES``): each one file holding its loss and its :class:`Objective` entry.

| name             | loss                  | model                      | THEORY       |
|------------------|-----------------------|----------------------------|--------------|
| denoising        | :class:`DenoisingLoss`     | Denoiser (any parameterization of x0) | §3.2 U1, §4.1 |
| cross_entropy    | :class:`CrossEntropyLoss`  | TokenDenoiser (``logits``) | §3.1, §4.3-§4.5 |
| poisson_field    | :class:`PoissonFieldLoss`  | Denoiser (``pfgm``)        | §6.2 P1 + P2 |
| classification   | :class:`ClassificationLoss`| NoisyClassifier            | §2.2 G1      |

``loss.objective: auto`` (the default) is the registered objective whose
``default_for`` accepts the prediction: ``cross_entropy`` for ``logits``,
``denoising`` for every other; config validation resolves it once and records
the name. A plugin registers its own with ``OBJECTIVES.register(name, cls)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..losses import Loss, TimeSampler
from ..registry import Registry
from .base import LOSS_DEFAULTS, Objective
from .classification import Classification, ClassificationLoss
from .cross_entropy import CE_WEIGHTINGS, CrossEntropy, CrossEntropyLoss
from .denoising import NORMS, WEIGHTINGS, Denoising, DenoisingLoss
from .poisson_field import PoissonField, PoissonFieldLoss, empirical_posterior_mean

OBJECTIVES: Registry[type[Objective]] = Registry("objective")
OBJECTIVES.register(Denoising.name, Denoising)
OBJECTIVES.register(CrossEntropy.name, CrossEntropy)
OBJECTIVES.register(PoissonField.name, PoissonField)
OBJECTIVES.register(Classification.name, Classification)


def resolve_objective(name: str, prediction: str) -> str:
    """The objective ``loss.objective: name`` means for ``prediction`` (``auto``: the one whose ``default_for`` accepts it)."""
    if name != "auto":
        OBJECTIVES.get(name)
        return name
    for candidate in OBJECTIVES:
        if OBJECTIVES.get(candidate).default_for(prediction):
            return candidate
    raise ValueError(f"no objective is the default for prediction {prediction!r}; set loss.objective to one of: {', '.join(OBJECTIVES)}")


def build_objective(prediction: Mapping[str, Any], loss: Mapping[str, Any] | None = None) -> Objective:
    """The objective of a config's ``prediction`` and ``loss`` sections, checked (ValueError naming the key)."""
    loss = dict(loss or {})
    loss["objective"] = resolve_objective(loss.get("objective", "auto"), prediction["name"])
    return OBJECTIVES.get(loss["objective"])(prediction, loss)


def make_loss(
    prediction: str,
    weighting: str | None = None,
    time_sampler: str | dict | TimeSampler | None = None,
    gamma: float = 5.0,
    norm: str = "l2",
    objective: str = "auto",
    points: int | None = None,
) -> Loss:
    """The loss of ``objective`` for ``prediction`` from Python arguments (None: each key's default), via the registry."""
    given = {"weighting": weighting, "time_sampler": time_sampler, "gamma": gamma, "norm": norm, "objective": objective, "points": points}
    loss = {k: v for k, v in given.items() if v is not None}
    if isinstance(loss.get("time_sampler"), str):
        loss["time_sampler"] = {"name": loss["time_sampler"]}
    return build_objective({"name": prediction}, {**LOSS_DEFAULTS, **loss}).loss


__all__ = [
    "CE_WEIGHTINGS",
    "LOSS_DEFAULTS",
    "NORMS",
    "OBJECTIVES",
    "WEIGHTINGS",
    "Classification",
    "ClassificationLoss",
    "CrossEntropy",
    "CrossEntropyLoss",
    "Denoising",
    "DenoisingLoss",
    "Objective",
    "PoissonField",
    "PoissonFieldLoss",
    "build_objective",
    "empirical_posterior_mean",
    "make_loss",
    "resolve_objective",
]
