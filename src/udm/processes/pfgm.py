"""Poisson flow generative models, PFGM (THEORY §6; Xu et al. 2022, code ``Newbeeer/Poisson_flow``).

Data sit on the plane z = 0 of the augmented space (x, z) in R^(N+1) and act as
charges; a point moves along the field lines F = (F_x, F_z) back to the plane.
THEORY §7.1 (solution A) shows the field is the gravity Green's function, whose
kernel in x at height z is the multivariate Cauchy law
p_z(x | y) ∝ z / (z^2 + |x - y|^2)^((N+1)/2), i.e. x = y + z eps with eps
Student-t with one degree of freedom, and whose field direction is

    dx/dz = F_x / F_z = (x - E[y | x, z]) / z.

So PFGM is a linear process (alpha = 1, sigma = z) with ``StudentTNoise(D=1)``:
the same kernel as PFGM++ at D = 1 (§7.4), the same x0-estimating network and
the same ODE solvers. This module adds what is specific to the PFGM paper:

* P1, the training perturbation z = |eps_z| (1+tau)^m, x = y + |eps_x| (1+tau)^m u
  with m ~ U[0, M] (and ``restrict_M``): :meth:`PFGMProcess.perturb`;
* P3, the prior on the plane z = z_max: R = z_max sqrt(b/(1-b)),
  b ~ Beta(N/2, 1/2), clipped to [1, upper_norm]; or the hemisphere prior
  projected radially onto that plane (the same law, THEORY §6.1);
* the rules of thumb for M, z_max and upper_norm from the data (§6.2);
* P4's log-z ODE is the ``variable="log_sigma"`` of the ODE solvers and the
  default grid is uniform in log z.

The P2 target (the normalized empirical field of a large batch) is the
``pfgm`` parameterization of :mod:`udm.denoiser` applied to the batch posterior
mean; :class:`udm.losses.PoissonFieldLoss` trains it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .. import rng
from .gaussian import EDMSchedule, LinearProcess
from .noise import StudentTNoise, unit_sphere

Tensor = torch.Tensor

PRIORS = ("plane", "hemisphere")


def rules_of_thumb(x: Tensor | np.ndarray, sigma: float = 0.01, tau: float = 0.03) -> dict[str, Any]:
    """M, z_max and upper_norm from the data (THEORY §6.2, the PFGM code's rules).

    M = floor(0.75 ln(mean|x|^2 / (2 sqrt(N) sigma^2)) / ln(1 + tau)) + 1,
    z_max = sqrt(2/pi) sigma (1+tau)^M, upper_norm = sqrt(N) sigma (1+tau)^M,
    with mean|x| the average norm of a data point and N its dimension.
    """
    arr = torch.as_tensor(np.asarray(x), dtype=torch.float64).flatten(1)
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"rules_of_thumb needs a non-empty batch of data, got shape {tuple(arr.shape)}")
    n_dim = arr.shape[1]
    mean_norm = float(arr.norm(dim=1).mean())
    ratio = mean_norm**2 / (2.0 * math.sqrt(n_dim) * sigma**2)
    if ratio <= 1.0:
        raise ValueError(
            f"rules_of_thumb: the data's mean norm {mean_norm:g} is too small for sigma={sigma:g} "
            "(need mean|x|^2 > 2 sqrt(N) sigma^2); lower sigma"
        )
    m = math.floor(0.75 * math.log(ratio) / math.log1p(tau)) + 1
    return {"M": m, **scales(m, n_dim, sigma, tau)}


def scales(M: float, n_dim: int, sigma: float = 0.01, tau: float = 0.03) -> dict[str, float]:
    """z_max = sqrt(2/pi) sigma (1+tau)^M and upper_norm = sqrt(N) sigma (1+tau)^M (THEORY §6.2)."""
    grow = sigma * (1.0 + tau) ** M
    return {"z_max": math.sqrt(2.0 / math.pi) * grow, "upper_norm": math.sqrt(n_dim) * grow}


class PFGMProcess(LinearProcess):
    """PFGM: x_z = y + z eps, eps ~ Student-t(1) on R^N, z in [z_min, z_max] (THEORY §6, §7.1).

    ``M``, ``tau``, ``sigma`` and ``restrict_M`` are P1's perturbation
    parameters. ``M=None`` leaves them to :meth:`fit_prior`, which applies the
    rules of thumb to the training data (the trainer calls it and writes the
    values into the config); ``z_max=None`` takes sqrt(2/pi) sigma (1+tau)^M.
    ``upper_norm`` clips prior radii to [1, upper_norm] as the paper does
    (None: no clipping). ``prior`` is ``"plane"`` or ``"hemisphere"``.
    """

    def __init__(
        self,
        z_min: float = 1e-3,
        z_max: float | None = None,
        M: float | None = None,
        tau: float = 0.03,
        sigma: float = 0.01,
        restrict_M: bool = True,
        prior: str = "plane",
        upper_norm: float | None = None,
    ) -> None:
        if prior not in PRIORS:
            raise ValueError(f"unknown PFGM prior {prior!r}; valid: {', '.join(PRIORS)}")
        if M is not None and M < 0:
            raise ValueError(f"PFGM: M must be >= 0, got {M}")
        if not (tau > 0 and sigma > 0):
            raise ValueError(f"PFGM: tau and sigma must be > 0, got tau={tau}, sigma={sigma}")
        if z_max is None:
            z_max = scales(M, 1, sigma, tau)["z_max"] if M is not None else 40.0
        if upper_norm is not None and upper_norm <= 1.0:
            raise ValueError(f"PFGM: upper_norm must exceed 1 (radii are clipped to [1, upper_norm]), got {upper_norm}")
        super().__init__(EDMSchedule(z_min, z_max), "pfgm", StudentTNoise(1.0))
        self.default_grid_name = "logsnr"  # uniform in log z (P4)
        self.M, self.tau, self.sigma_p1, self.restrict_M = M, float(tau), float(sigma), bool(restrict_M)
        self.prior_kind, self.upper_norm = prior, upper_norm

    @property
    def has_prior(self) -> bool:
        """True once the perturbation range M is known (given, or fitted by :meth:`fit_prior`)."""
        return self.M is not None

    def fit_prior(self, x: Tensor | np.ndarray, seed: int = 0) -> dict[str, Any]:
        """Set M, z_max and upper_norm from training data by the rules of thumb; return them for the config."""
        fitted = rules_of_thumb(x, self.sigma_p1, self.tau)
        self.M, self.upper_norm = fitted["M"], fitted["upper_norm"]
        self.schedule = EDMSchedule(self.t_eps, fitted["z_max"])
        self.t_max = float(fitted["z_max"])
        return fitted

    def fit(self, x: Tensor, *, seed: int) -> dict[str, Any]:
        """P1's range fitted to training data ``x`` (:meth:`fit_prior`), or ``{}`` when M is given (THEORY §6.2)."""
        return {} if self.has_prior else self.fit_prior(x, seed=seed)

    def perturb(self, y: Tensor, generator: rng.GeneratorLike = None) -> tuple[Tensor, Tensor]:
        """P1 (THEORY §6.2): (z, eps) with z = |eps_z| (1+tau)^m and y + z eps = y + |eps_x| (1+tau)^m u.

        m ~ U[0, M]; with ``restrict_M`` samples with |eps_z| < 0.005 draw
        m ~ U[0, 0.7 M] instead (paper App. B.1.1). eps = (|eps_x| / |eps_z|) u is
        returned so that ``corrupt(y, z, eps)`` gives P1's x. z is float64.
        """
        if self.M is None:
            raise ValueError("PFGM perturbation needs M: pass M= or call process.fit_prior(training_data) first")
        gen = rng.as_generator(generator)
        n = y.shape[0]
        e_z = self.sigma_p1 * rng.randn((n,), gen, dtype=torch.float64, device=y.device).abs()
        e_x = self.sigma_p1 * rng.randn(tuple(y.shape), gen, dtype=torch.float64, device=y.device).flatten(1).norm(dim=1)
        m = rng.rand((n,), gen, dtype=torch.float64, device=y.device) * self.M
        if self.restrict_M:
            m = torch.where(e_z < 0.005, 0.7 * m, m)
        grow = (1.0 + self.tau) ** m
        z = e_z * grow
        u = unit_sphere(tuple(y.shape), gen, torch.float64, y.device)
        eps = (e_x / e_z).reshape(-1, *([1] * (y.ndim - 1))) * u
        return z, eps.to(y.dtype)

    def prior(
        self,
        shape: Sequence[int],
        generator: rng.GeneratorLike = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """P3 (THEORY §6.2): x on the plane z = z_max with radius law ∝ R^(N-1) (R^2 + z_max^2)^(-(N+1)/2).

        ``plane``: R = z_max sqrt(b/(1-b)), b ~ Beta(N/2, 1/2). ``hemisphere``: a
        point r g/|g| (g ~ N(0, I_{N+1}), g_z > 0) projected radially onto the
        plane, x = z_max g_x / |g_z|, the same law. Radii are clipped to
        [1, upper_norm] when ``upper_norm`` is set.
        """
        shape = tuple(shape)
        gen = rng.as_generator(generator)
        z_max = float(self.sigma(self.t_max))
        if self.prior_kind == "plane":
            x = z_max * self.noise.sample(shape, gen, dtype=torch.float64, device=device)
        else:
            g = rng.randn((shape[0], int(np.prod(shape[1:])) + 1), gen, dtype=torch.float64, device=device)
            x = (z_max * g[:, :-1] / g[:, -1:].abs()).reshape(shape)
        if self.upper_norm is not None:
            r = x.flatten(1).norm(dim=1).reshape(-1, *([1] * (len(shape) - 1)))
            x = x * (r.clamp(1.0, float(self.upper_norm)) / r)
        return x.to(dtype)

    def __repr__(self) -> str:
        return (
            f"PFGMProcess(z in [{self.t_eps:g}, {self.t_max:g}], M={self.M}, tau={self.tau:g}, sigma={self.sigma_p1:g}, "
            f"prior={self.prior_kind!r}, upper_norm={self.upper_norm})"
        )
