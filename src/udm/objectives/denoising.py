"""The denoising objective for any parameterization, driven by the process (THEORY §3.2 U1, §4.1).

One denoising loss covers every Gaussian-family model. Draw t from a time
sampler, eps ~ q, x_t = F_t(x0, eps); the network outputs its
parameterization's target a(t) x_t + b(t) x0 (see :mod:`udm.denoiser`), so

    ||pred - target||^2 = b(t)^2 ||x0_hat - x0||^2.

Every weighting in the literature is therefore an x0-space weight lambda(t):

* ``weighting="target"`` (default): plain MSE in the network's own
  parameterization, lambda = b_pred^2. With ``prediction="edm"`` this *is*
  EDM's lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2
  (Karras et al. 2022, eq. 8), because b_edm = 1 / c_out;
* a parameterization name (``"eps"``, ``"x0"``, ``"v"``, ``"velocity"``,
  ``"score"``, ``"edm"``): MSE as if the network predicted that quantity,
  lambda = b_kind^2 (``"eps"`` is the DDPM "simple" loss, lambda = SNR);
* ``"min_snr"``: min(SNR, gamma) (Hang et al. 2023);
* ``"likelihood"``: g(t)^2 times score matching, lambda = g^2 alpha^2 / sigma^4,
  the weighting for which the loss bounds the NLL (Song et al. 2021).

The loss is evaluated as (lambda / b_pred^2) ||pred - target||^2, so it never
divides by a vanishing b.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..denoiser import Denoiser, from_x0, get_parameterization
from ..losses import Loss, LossOutput, TimeSampler
from ..processes.base import GaussianPath, LinearPath, Process, require
from .base import Objective

Tensor = torch.Tensor


def _x0_weight(process: Process, t: Tensor, weighting: str, gamma: float) -> Tensor:
    """lambda(t): the weight on ||x0_hat - x0||^2 that ``weighting`` means (module docstring)."""
    if weighting == "min_snr":
        return torch.clamp(torch.exp(require(process, LinearPath, "min_snr weighting").log_snr(t)), max=gamma)
    if weighting == "likelihood":
        p = require(process, GaussianPath, "likelihood weighting")
        _, g2 = p.sde(t)
        return g2 * p.alpha(t) ** 2 / p.sigma(t) ** 4
    _, b = get_parameterization(weighting).coefficients(process, t)
    return b**2


WEIGHTINGS = ("target", "x0", "eps", "score", "v", "velocity", "edm", "min_snr", "likelihood")

NORMS = ("l2", "l1")


class DenoisingLoss(Loss):
    """E_t E_{x0, eps} w(t) lambda(t) ||x0_hat(F_t(x0, eps), t) - x0||^2, computed in the network's target space.

    ``weighting`` is one of ``WEIGHTINGS`` (module docstring); ``time_sampler``
    a ``TIME_SAMPLERS`` spec; ``gamma`` the min-SNR cap. Works for any process
    with the Process protocol: Gaussian-family parameterizations need a
    Gaussian process, the ``x0`` prediction works for any continuous one.

    ``norm="l1"`` is the restoration loss ||x0 - G_t(x_t)||_1 of cold
    diffusion, the Laplace ("l1 normal") posterior family of THEORY §4.2; the
    weightings are L2 identities, so L1 takes the network's own target only.
    """

    def __init__(
        self,
        weighting: str = "target",
        time_sampler: str | dict | TimeSampler | None = None,
        gamma: float = 5.0,
        norm: str = "l2",
    ) -> None:
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown loss weighting {weighting!r} (loss.weighting); valid weightings: {', '.join(WEIGHTINGS)}")
        if norm not in NORMS:
            raise ValueError(f"unknown loss norm {norm!r} (loss.norm); valid norms: {', '.join(NORMS)}")
        if norm == "l1" and weighting != "target":
            raise ValueError(f"the l1 norm takes weighting 'target' (the weightings are L2 identities), got {weighting!r}")
        super().__init__(time_sampler)
        self.weighting = weighting
        self.gamma = float(gamma)
        self.norm = norm

    def rows(self, n: int) -> int:
        """How many rows of a batch of ``n`` are training points (all of them here)."""
        return n

    def regression_x0(self, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The clean value the network's target is built from at the training points ``x_t``: their own x0 here."""
        return x0[: x_t.shape[0]]

    def factor(self, denoiser: Denoiser, t: Tensor) -> Tensor | None:
        """lambda(t) / b_pred(t)^2 (None when the weighting is the network's own target: factor 1)."""
        if self.weighting in ("target", denoiser.prediction):
            return None
        _, b = denoiser.parameterization.coefficients(denoiser.process, t)
        return _x0_weight(denoiser.process, t, self.weighting, self.gamma) / b**2

    def at(self, denoiser: Denoiser, x0: Tensor, cond: Tensor | None, t: Tensor, w: Tensor, eps: Tensor) -> LossOutput:
        """The loss on a batch ``x0`` at (t, w, eps); PFGM's batch field keeps only the first :meth:`rows`."""
        process = denoiser.process
        n = self.rows(x0.shape[0])
        t, w, eps = t[:n], w[:n], eps[:n]
        x_t = process.corrupt(x0[:n], t, eps)
        pred = denoiser.raw(x_t, t, None if cond is None else cond[:n])
        target = from_x0(self.regression_x0(x0, x_t, t), x_t, t, process, denoiser.parameterization)
        dtype = torch.promote_types(pred.dtype, torch.float32)  # at least float32; float64 stays float64
        diff = pred.to(dtype) - target.to(dtype)
        err = (diff.abs() if self.norm == "l1" else diff.pow(2)).flatten(1).mean(1)
        factor = self.factor(denoiser, t)
        scale = w if factor is None else w * factor.reshape(-1)
        per_sample = err * scale.to(err.dtype)
        objective = (err if factor is None else err * factor.reshape(-1).to(err.dtype)).detach()
        return LossOutput(per_sample.mean(), per_sample, t, w, objective)

    def config(self) -> dict:
        return {"weighting": self.weighting, "time_sampler": self.time_sampler.config(), "gamma": self.gamma, "norm": self.norm}


class Denoising(Objective):
    """Regress the network's parameterization of x0 (:class:`DenoisingLoss`); ``auto`` for every prediction but ``logits``."""

    name = "denoising"
    keys = ("weighting", "time_sampler", "gamma", "norm")

    def __init__(self, prediction: Mapping[str, Any], loss: Mapping[str, Any] | None = None) -> None:
        if prediction["name"] == "logits":
            raise ValueError("objective 'denoising' regresses a parameterization of x0; the 'logits' prediction is trained by 'cross_entropy'")
        super().__init__(prediction, loss)

    @classmethod
    def default_for(cls, prediction: str) -> bool:
        return prediction != "logits"

    def build_loss(self) -> DenoisingLoss:
        o = self.options
        return DenoisingLoss(o["weighting"], o["time_sampler"], o["gamma"], o["norm"])
