"""The noise-level coordinate of a linear path, in one place (THEORY §5.2, "mapping VP to VE").

For x_t = alpha_t x0 + sigma_t eps the scaled state y = x/alpha = x0 + sigma~ eps
has noise level sigma~ = sigma/alpha, the same for VP, VE and EDM processes.
Samplers, grids, grid tuning and the likelihood ODE measure time in one of:

* ``"sigma"``: u = sigma~ (EDM's variable, Karras et al. 2022 §3), dy/du = eps_hat;
* ``"log_sigma"``: u = log sigma~, dy/du = sigma~ eps_hat (PFGM's log z, THEORY §6.2, P4);
* ``"t"``: the process's own time, state x, dx/dt = alpha' x0_hat + sigma' eps_hat
  (the flow-matching convention, THEORY §8.1).

The exponential integrators use lambda = log(alpha/sigma) = -log sigma~
(:func:`half_log_snr`). sigma~ is finite exactly where alpha > 0
(:func:`finite_level`); where it is not (rectified flow at t = 1) only ``"t"`` is defined.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import torch

from ..denoiser import from_x0
from ..processes.base import LinearPath

Tensor = torch.Tensor
T = TypeVar("T", float, Tensor)
VARIABLES = ("sigma", "log_sigma", "t")


def finite_level(process: LinearPath, t: float) -> bool:
    """True where sigma~_t = sigma_t/alpha_t is finite, i.e. alpha_t > 0: the sigma~ variables exist there."""
    return float(process.alpha(t)) > 0


def half_log_snr(process: LinearPath, t: float) -> float:
    """lambda_t = log(alpha_t / sigma_t) = -log sigma~_t (+inf on clean data, -inf where alpha_t = 0)."""
    a, s = float(process.alpha(t)), float(process.sigma(t))
    if s == 0.0:
        return math.inf
    if a == 0.0:
        return -math.inf
    return math.log(a) - math.log(s)


def brownian_time(process: LinearPath, t: float) -> float:
    """w = alpha_t^2/sigma_t^2 = e^(2 lambda_t), the time in which stochastic samplers query their Brownian path.

    In this time the reverse SDE's noise over a step is exact: with
    sigma_r = g (THEORY §2.1) and x0_hat held fixed over the step, the noise the
    exact solution adds from t to s is sigma_s sqrt(1 - e^(-2h)) times the
    standardized increment of W over [w_t, w_s] (h = lambda_s - lambda_t), since
    in y = x/alpha it is alpha_s sigma~_s^2 (W(w_s) - W(w_t)). w = 0 where alpha = 0
    (pure noise) and +inf on clean data.
    """
    lam = half_log_snr(process, t)
    return 0.0 if lam == -math.inf else math.exp(2.0 * lam)


def karras_level(process: LinearPath, rho: float) -> tuple[Callable[[T], T], Callable[[T], T]]:
    """Karras et al.'s (2022, eq. 5) coordinate sigma~^(1/rho) of t and its inverse, on floats or float64 tensors."""
    view = ODEView(process, "sigma")
    return (lambda t: view.u(t) ** (1.0 / rho)), (lambda level: view.t(level**rho))


class ODEView:
    """The PF-ODE of a linear process in one of :data:`VARIABLES`: time map, state map and derivative."""

    def __init__(self, process: LinearPath, variable: str) -> None:
        if variable not in VARIABLES:
            raise ValueError(f"ODE variable must be one of {', '.join(VARIABLES)}, got {variable!r}")
        self.process, self.variable = process, variable

    @classmethod
    def default(cls, process: LinearPath, times: Tensor, variable: str | None) -> ODEView:
        """``variable`` or, if None, "sigma" where sigma~ is finite at the first time and "t" otherwise."""
        finite = finite_level(process, float(times[0]))
        if variable is None:
            variable = "sigma" if finite else "t"
        if variable != "t" and not finite:
            raise ValueError(f"alpha_t = 0 at the first time, so the {variable!r} ODE variable is undefined there; use variable='t'")
        return cls(process, variable)

    @property
    def scaled(self) -> bool:
        """True for the sigma~ variables, whose state is y = x / alpha."""
        return self.variable != "t"

    def u(self, t: T) -> T:
        """The ODE time variable at process time t (a float, or elementwise on a float64 tensor)."""
        if self.variable == "t":
            return t
        st = self.process.sigma_tilde(t)
        if isinstance(t, Tensor):
            return st if self.variable == "sigma" else torch.log(st)
        st = float(st)
        return st if self.variable == "sigma" else (math.log(st) if st > 0 else -math.inf)

    def t(self, u: T) -> T:
        """Process time at ODE time u (a float, or elementwise on a float64 tensor)."""
        if self.variable == "t":
            return u
        st = u if self.variable == "sigma" else (torch.exp(u) if isinstance(u, Tensor) else math.exp(u))
        t = self.process.t_from_sigma_tilde(st)
        return t if isinstance(u, Tensor) else float(t)

    def to_state(self, x: Tensor, t: float) -> Tensor:
        return x / float(self.process.alpha(t)) if self.scaled else x

    def from_state(self, y: Tensor, t: float) -> Tensor:
        return y * float(self.process.alpha(t)) if self.scaled else y

    def derivative(self, x0_hat: Tensor, x: Tensor, t: float) -> Tensor:
        """dy/du at (x_t, t) given x0_hat: eps_hat (sigma), sigma~ eps_hat (log_sigma) or the velocity (t)."""
        if self.variable == "t":
            return from_x0(x0_hat, x, t, self.process, "velocity")
        eps = from_x0(x0_hat, x, t, self.process, "eps")
        return eps if self.variable == "sigma" else float(self.process.sigma_tilde(t)) * eps

    def step(self, y: Tensor, d: Tensor, x0_hat: Tensor, t: float, s: float) -> Tensor:
        """The Euler update of y from t to s with slope d; into clean data (sigma~_s = 0) it is y_s = x0_hat."""
        if self.scaled and self.is_clean(s):
            return x0_hat
        return y + (self.u(s) - self.u(t)) * d

    def is_clean(self, t: float) -> bool:
        """True where sigma_t = 0: x_t is the data."""
        return float(self.process.sigma(t)) == 0.0
