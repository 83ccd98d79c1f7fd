"""PFGM's objective (THEORY §6.2, P1 + P2): regress the normalized empirical Poisson field of the batch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..processes.base import FieldPerturbation, Process, require
from .base import Objective
from .denoising import DenoisingLoss

Tensor = torch.Tensor


def empirical_posterior_mean(x: Tensor, z: Tensor, reference: Tensor) -> Tensor:
    """sum_j w_j y_j with PFGM's stable weights w_j ∝ (|x - y_j|^2 + z^2)^(-(N+1)/2) (THEORY §6.2, P2 step 1).

    These are the posterior weights of the gravity (Cauchy) kernel over the
    reference batch, computed as a softmax of -(N+1) log d_j, which is P2's
    (min_k d_k / d_j)^(N+1), renormalized. ``z`` is per sample (n,).
    """
    xf, yf = x.flatten(1).to(torch.float64), reference.flatten(1).to(torch.float64)
    d2 = torch.cdist(xf, yf).pow(2) + z.to(torch.float64).reshape(-1, 1) ** 2
    w = torch.softmax(-0.5 * (xf.shape[1] + 1) * torch.log(d2), dim=1)
    return (w @ yf).reshape(x.shape).to(x.dtype)


class PoissonFieldLoss(DenoisingLoss):
    """PFGM's objective (THEORY §6.2, P1 + P2): regress the normalized empirical field of the batch.

    (z, eps) come from the process's P1 perturbation (``process.perturb``) for
    the first ``points`` rows of the batch (all rows by default); the target is
    the field of the *whole* batch at those points, i.e. the ``pfgm``
    parameterization of the empirical posterior mean (:func:`empirical_posterior_mean`).
    A batch of B rows with ``points`` = n is the paper's large batch B / small batch n.
    The target is biased for finite B (normalization after averaging, §6.1);
    the unbiased alternative is :class:`DenoisingLoss` on the same process (the
    conditional-velocity target of §7.2, GF1).
    """

    def __init__(self, points: int | None = None) -> None:
        if points is not None and points < 1:
            raise ValueError(f"poisson_field loss: points must be >= 1, got {points}")
        super().__init__("target")
        self.points = points

    def draw(self, process: Process, x0: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """P1's (z, eps) for every row and unit weights."""
        z, eps = require(process, FieldPerturbation, "the poisson_field loss", "use process pfgm").perturb(x0, generator)
        return z, torch.ones_like(z), eps

    def rows(self, n: int) -> int:
        """The small batch: the first ``points`` rows."""
        return min(self.points or n, n)

    def regression_x0(self, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The posterior mean of the whole batch's field at x_t (P2)."""
        return empirical_posterior_mean(x_t, t, x0)

    def config(self) -> dict:
        return {"objective": "poisson_field", "points": self.points}


class PoissonField(Objective):
    """Train PFGM's ``pfgm`` prediction on the P1 perturbation with P2's batch field (:class:`PoissonFieldLoss`).

    ``loss.points`` is the small batch n of the paper's large batch B / small batch n.
    """

    name = "poisson_field"
    keys = ("points",)
    process_needs = ((FieldPerturbation, "use process pfgm (its P1 perturbation)"),)

    def __init__(self, prediction: Mapping[str, Any], loss: Mapping[str, Any] | None = None) -> None:
        if prediction["name"] != "pfgm":
            raise ValueError("the poisson_field objective trains the 'pfgm' prediction with weighting 'target'")
        super().__init__(prediction, loss)

    def build_loss(self) -> PoissonFieldLoss:
        return PoissonFieldLoss(self.options["points"])
