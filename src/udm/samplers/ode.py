"""Probability-flow ODE solvers: Euler, Heun (EDM, with churn) and adaptive RK45 (THEORY §5.2, O2).

Each solver integrates the PF-ODE in one of the variables of
:class:`~udm.samplers.coordinates.ODEView`: ``"sigma"`` (EDM's choice,
Karras et al. 2022 §3; y = x/alpha, u = sigma~ = sigma/alpha, dy/du = eps_hat,
where Euler is exactly DDIM with eta = 0), ``"log_sigma"`` (u = log sigma~, as
PFGM integrates its backward ODE in t' = log z, THEORY §6.2, P4) or ``"t"``
(the process's own time, dx/dt = alpha' x0_hat + sigma' eps_hat, the
flow-matching convention).

These are the ODE of any *linear* process x_t = alpha x0 + sigma eps, whatever
the law of eps (THEORY §8.1: the marginal velocity is alpha' E[x0|x_t] + sigma' E[eps|x_t]),
so the solvers serve Gaussian, PFGM++ and flow-matching processes alike.

The default is ``"sigma"`` unless alpha vanishes at the first time (rectified
flow at t = 1), where only ``"t"`` is defined. A step whose target is clean
data (sigma_s = 0) is an Euler step, which lands on x0_hat in the sigma variables.
"""

from __future__ import annotations

import torch

from .. import rng
from ..processes.base import LinearPath, require
from .common import LINEAR_HINT, Callback, DenoiseFn, NoiseSource, Project, alpha_sigma, noise_source, report
from .coordinates import ODEView

#: EDM's bound on the churn factor gamma (Karras et al. 2022, Algorithm 2).
MAX_GAMMA = 2**0.5 - 1


def check_churn(name: str, *, churn: float = 0.0, variable: str | None = None, **_: object) -> None:
    """Refuse churn options no sampler takes: one rule for :class:`Churn` and for configs (before a run starts)."""
    if not (isinstance(churn, (int, float)) and churn >= 0):
        raise ValueError(f"sampler {name!r}: churn must be >= 0, got {churn!r}")
    if churn > 0 and variable not in (None, "sigma"):
        raise ValueError(f"sampler {name!r}: stochastic churn is defined in the sigma variable; use variable='sigma'")


class Churn:
    """EDM's stochastic churn (Karras et al. 2022, Algorithm 2, lines 4-6), shared by :func:`euler` and :func:`heun`.

    Before a step from t whose sigma~ lies in [tmin, tmax], the noise level is
    raised to sigma^ = sigma~ (1 + gamma), gamma = min(churn/steps, sqrt(2) - 1),
    by adding sqrt(sigma^2 - sigma~^2) * s_noise * z to y = x/alpha. z is the
    standardized increment of the sample's Brownian path (:mod:`udm.brownian`)
    over [w^, w_t], w = 1/sigma~^2: the noise of "going back up" from sigma~ to
    sigma^, drawn from the same path for any batch and any grid.
    """

    def __init__(self, view: ODEView, x: Tensor, steps: int, churn: float, tmin: float, tmax: float, s_noise: float,
                 noise: NoiseSource | None, generator: rng.GeneratorLike) -> None:
        if churn > 0 and view.variable != "sigma":
            raise ValueError("stochastic churn is defined in the sigma variable; use variable='sigma'")
        self.view, self.gamma, self.tmin, self.tmax, self.s_noise = view, min(churn / steps, MAX_GAMMA), tmin, tmax, s_noise
        self.noise = noise_source(noise, generator, x) if churn > 0 else None

    def __call__(self, x: Tensor, t: float) -> tuple[Tensor, float]:
        """(x at the raised level, its time): unchanged where churn is off or sigma~_t is outside [tmin, tmax]."""
        u_t = self.view.u(t)
        if self.noise is None or not self.tmin <= u_t <= self.tmax or u_t == 0.0:
            return x, t
        u_hat = u_t * (1 + self.gamma)
        z = self.noise.normal(u_hat**-2, u_t**-2)
        y = self.view.to_state(x, t) + (u_hat**2 - u_t**2) ** 0.5 * self.s_noise * z
        t_hat = self.view.t(u_hat)
        return self.view.from_state(y, t_hat), t_hat

Tensor = torch.Tensor


def euler(
    denoiser: DenoiseFn,
    process: LinearPath,
    x: Tensor,
    times: Tensor,
    *,
    variable: str | None = None,
    churn: float = 0.0,
    churn_tmin: float = 0.0,
    churn_tmax: float = float("inf"),
    churn_noise: float = 1.0,
    noise: NoiseSource | None = None,
    generator: rng.GeneratorLike = None,
    callback: Callback = None,
    project: Project = None,
) -> Tensor:
    """Euler's method on the PF-ODE (first order); in the sigma variable it equals DDIM(eta=0).

    With ``churn > 0`` it is EDM's stochastic Euler sampler: each step first
    raises the noise level (:class:`Churn`, sigma variable only).
    """
    view = ODEView.default(require(process, LinearPath, "sampler 'euler'", LINEAR_HINT), times, variable)
    ts = times.tolist()
    check_churn("euler", churn=churn, variable=variable)
    raise_level = Churn(view, x, len(ts) - 1, churn, churn_tmin, churn_tmax, churn_noise, noise, generator)
    for i, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
        x, t = raise_level(x, t)
        x0 = denoiser(x, t)
        if view.variable == "sigma":
            # y_s = y_t + (u_s - u_t) eps_hat, written as alpha_s x0_hat + sigma_s eps_hat
            a_s, s_s = alpha_sigma(process, s)
            x = a_s * x0 + s_s * view.derivative(x0, x, t)
        else:
            x = view.from_state(view.step(view.to_state(x, t), view.derivative(x0, x, t), x0, t, s), s)
        x = report(callback, i, t, s, x, x0, project)
    return x


def heun(
    denoiser: DenoiseFn,
    process: LinearPath,
    x: Tensor,
    times: Tensor,
    *,
    variable: str | None = None,
    churn: float = 0.0,
    churn_tmin: float = 0.0,
    churn_tmax: float = float("inf"),
    churn_noise: float = 1.0,
    noise: NoiseSource | None = None,
    generator: rng.GeneratorLike = None,
    callback: Callback = None,
    project: Project = None,
) -> Tensor:
    """Heun's second-order method (Karras et al. 2022, Algorithm 2), with optional stochastic churn.

    With ``churn > 0`` (S_churn), each step whose sigma~ lies in
    [churn_tmin, churn_tmax] first raises the noise level (:class:`Churn`,
    sigma variable only). The last step into clean data is an Euler step, as in EDM.
    """
    view = ODEView.default(require(process, LinearPath, "sampler 'heun'", LINEAR_HINT), times, variable)
    ts = times.tolist()
    check_churn("heun", churn=churn, variable=variable)
    raise_level = Churn(view, x, len(ts) - 1, churn, churn_tmin, churn_tmax, churn_noise, noise, generator)
    for i, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
        x, t = raise_level(x, t)
        u_t, u_s = view.u(t), view.u(s)
        y = view.to_state(x, t)
        x0 = denoiser(x, t)
        d = view.derivative(x0, x, t)
        y_next = view.step(y, d, x0, t, s)
        if not view.is_clean(s):
            x_next = view.from_state(y_next, s)
            d2 = view.derivative(denoiser(x_next, s), x_next, s)
            y_next = y + (u_s - u_t) * 0.5 * (d + d2)
        x = view.from_state(y_next, s)
        x = report(callback, i, t, s, x, x0, project)
    return x


def rk45(
    denoiser: DenoiseFn,
    process: LinearPath,
    x: Tensor,
    times: Tensor,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    variable: str | None = None,
    callback: Callback = None,
    project: Project = None,
) -> Tensor:
    """Adaptive Runge-Kutta (Dormand-Prince 5(4) via torchdiffeq) on the PF-ODE (THEORY §5.2, O2).

    The solver integrates from ``times[0]`` to the last positive grid time,
    returning the state at every grid time (for the callback); a final step
    into clean data is the Euler/Tweedie step x0_hat. The number of network
    evaluations is counted by :func:`udm.sample` (``return_info=True``).
    With a projection (:mod:`udm.conditioning`) the state changes at every
    grid time, so each grid interval is a solve of its own.
    """
    from torchdiffeq import odeint

    view = ODEView.default(require(process, LinearPath, "sampler 'rk45'", LINEAR_HINT), times, variable)
    ts = times.tolist()
    last = len(ts) - 1 if view.is_clean(ts[-1]) else len(ts)
    positive = ts[:last]

    u_lo, u_hi = sorted((view.u(positive[0]), view.u(positive[-1])))

    def field(u: Tensor, y: Tensor) -> Tensor:
        # the solver's first-step heuristic may probe outside the interval; stay inside the domain
        t = view.t(min(max(float(u), u_lo), u_hi))
        xt = view.from_state(y, t)
        return view.derivative(denoiser(xt, t), xt, t)

    def solve(x: Tensor, grid: list[float]) -> Tensor:
        """The states at the times ``grid`` (the first is x's), one adaptive solve."""
        grid_u = torch.tensor([view.u(t) for t in grid], dtype=torch.float64)
        return odeint(field, view.to_state(x, grid[0]), grid_u.to(x.device), rtol=rtol, atol=atol, method=method)

    if len(positive) >= 2 and project is None:
        ys = solve(x, positive)
        for i in range(1, len(positive)):
            report(callback, i - 1, positive[i - 1], positive[i], view.from_state(ys[i], positive[i]), None)
        x = view.from_state(ys[-1], positive[-1])
    elif len(positive) >= 2:
        for i in range(1, len(positive)):
            y = solve(x, positive[i - 1 : i + 1])[-1]
            x = report(callback, i - 1, positive[i - 1], positive[i], view.from_state(y, positive[i]), None, project)
    if last < len(ts):
        t = positive[-1]
        x0 = denoiser(x, t)
        x = view.from_state(view.step(view.to_state(x, t), view.derivative(x0, x, t), x0, t, ts[-1]), ts[-1])
        x = report(callback, len(ts) - 2, t, ts[-1], x, x0, project)
    return x
