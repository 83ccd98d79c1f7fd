"""High-order solvers of the reverse-SDE family, exact in its linear and noise parts (THEORY §2.1).

For a Gaussian path the family dx = [f x - (g^2 + sigma_r^2)/2 score] dt + sigma_r dw
with sigma_r = eta g, written in the half log-SNR lambda and the data
prediction x0_hat, integrates exactly except for x0_hat itself
(:func:`~udm.samplers.exponential.exponential_step`; Lu et al. 2022,
"DPM-Solver++", SDE form; Xue et al. 2023, "SA-Solver"):

    x_s = (sigma_s/sigma_t) e^{-eta^2 h} x_t + alpha_s int (1+eta^2) e^{-(1+eta^2)(lambda_s - lambda)} x0_hat dlambda
          + sigma_s sqrt(1 - e^{-2 eta^2 h}) z.

The solvers differ in how they approximate x0_hat(lambda) over the step:

* :func:`dpmpp_2m_sde`, :func:`dpmpp_3m_sde`: the last two or three
  evaluations, extrapolated (DPM-Solver++(2M/3M) SDE);
* :func:`dpmpp_sde`: a stochastic exponential midpoint, one extra evaluation
  inside the step on the same Brownian path (DPM-Solver++ SDE, a stochastic
  Runge-Kutta method);
* :func:`sa_solver`: Lagrange interpolation through the last ``order``
  evaluations integrated against the exponential kernel in closed form
  (stochastic Adams-Bashforth), then a corrector through the new evaluation
  (Adams-Moulton) at no extra evaluation.

Noise: z is the standardized increment, over [w_t, w_s] with w = alpha^2/sigma^2
(:func:`~udm.samplers.coordinates.brownian_time`), of one Brownian path per
sample (:class:`udm.brownian.BrownianPath`, keyed by the sample's generator).
So a sample does not change with the batch it is drawn in, and 2n steps walk
the same path as n steps. eta is THEORY's factor (sigma_r = eta g, as DDIM's
eta and SA-Solver's tau); k-diffusion's ``eta`` is eta^2. Every solver needs
eps ~ N(0, I) (:class:`~udm.processes.base.GaussianPath`) for eta > 0; the step
into clean data is deterministic, as in the ODE solvers (``final_order``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .. import rng
from ..processes.base import GaussianPath, LinearPath, require
from .common import GAUSSIAN_HINT, LINEAR_HINT, Callback, DenoiseFn, NoiseSource, Project, alpha_sigma, noise_source, report
from .coordinates import half_log_snr
from .exponential import Evaluation, check_final_order, dpmpp_multistep, evaluate, exponential_step, final_step, usable_order

Tensor = torch.Tensor


def check_options(
    name: str, *, eta: float = 1.0, r: float = 0.5, order: int = 3, corrector_order: int = 3, final_order: int = 1, **_: Any
) -> None:
    """Refuse option values no stochastic solver here takes: one rule for the samplers and for configs (before a run starts)."""
    if not (isinstance(eta, (int, float)) and not isinstance(eta, bool) and math.isfinite(eta) and eta >= 0):
        raise ValueError(f"sampler {name!r}: eta must be a finite number >= 0, got {eta!r}")
    if not (isinstance(r, (int, float)) and 0.0 < r <= 1.0):
        raise ValueError(f"sampler {name!r}: the stage r must be in (0, 1], got {r!r}")
    if order not in (1, 2, 3, 4) or corrector_order not in (0, 1, 2, 3, 4):
        raise ValueError(f"sampler {name!r}: order must be 1-4 and corrector_order 0-4, got {order}, {corrector_order}")
    check_final_order(final_order)


def _setup(
    process: LinearPath, name: str, x: Tensor, eta: float, noise: NoiseSource | None, generator: rng.GeneratorLike
) -> tuple[LinearPath, NoiseSource | None]:
    """The process, checked (any linear path at eta = 0, a Gaussian one for eta > 0), and the noise source (none at eta = 0)."""
    if eta == 0:
        return require(process, LinearPath, f"sampler {name!r}", LINEAR_HINT), None
    p = require(process, GaussianPath, f"sampler {name!r} with eta > 0", GAUSSIAN_HINT)
    return p, noise_source(noise, generator, x)


def dpmpp_2m_sde(
    denoiser: DenoiseFn,
    process: GaussianPath,
    x: Tensor,
    times: Tensor,
    *,
    eta: float = 1.0,
    lower_order_final: bool = True,
    final_order: int = 1,
    noise: NoiseSource | None = None,
    generator: rng.GeneratorLike = None,
    callback: Callback = None,
    project: Project = None,
) -> Tensor:
    """DPM-Solver++(2M) SDE: x0_hat extrapolated linearly in lambda, "midpoint" form, per-sample Brownian noise.

    At eta = 1 it is diffusers' ``sde-dpmsolver++`` of order 2 (midpoint) and
    k-diffusion's ``sample_dpmpp_2m_sde``; eta = 0 is :func:`~udm.samplers.exponential.dpmpp_2m`.
    """
    check_options("dpmpp_2m_sde", eta=eta, final_order=final_order)
    p, src = _setup(process, "dpmpp_2m_sde", x, eta, noise, generator)
    return dpmpp_multistep(denoiser, p, x, times, 2, lower_order_final, final_order, False, callback, project, eta, src)


def dpmpp_3m_sde(
    denoiser: DenoiseFn,
    process: GaussianPath,
    x: Tensor,
    times: Tensor,
    *,
    eta: float = 1.0,
    lower_order_final: bool = True,
    final_order: int = 1,
    diffusers_compat: bool = False,
    noise: NoiseSource | None = None,
    generator: rng.GeneratorLike = None,
    callback: Callback = None,
    project: Project = None,
) -> Tensor:
    """DPM-Solver++(3M) SDE: x0_hat extrapolated quadratically in lambda, integrated exactly against e^{-(1+eta^2)(lambda_s - lambda)}.

    The D2 coefficient is c = 1 - 2/(a h) + 2 phi_1/(a h)^2 with a = 1 + eta^2,
    exact for quadratic x0_hat. k-diffusion's ``sample_dpmpp_3m_sde`` uses c/2
    (``diffusers_compat=True``), the same second-order slip as the published ODE
    3M (:func:`~udm.samplers.exponential.dpmpp_3m`); diffusers' sde-dpmsolver++
    of order 3 uses c/2 - 1, whose error does not vanish with the step.
    """
    check_options("dpmpp_3m_sde", eta=eta, final_order=final_order)
    p, src = _setup(process, "dpmpp_3m_sde", x, eta, noise, generator)
    return dpmpp_multistep(denoiser, p, x, times, 3, lower_order_final, final_order, diffusers_compat, callback, project, eta, src)


def dpmpp_sde(
    denoiser: DenoiseFn,
    process: GaussianPath,
    x: Tensor,
    times: Tensor,
    *,
    eta: float = 1.0,
    r: float = 0.5,
    final_order: int = 1,
    noise: NoiseSource | None = None,
    generator: rng.GeneratorLike = None,
    callback: Callback = None,
    project: Project = None,
) -> Tensor:
    """DPM-Solver++ SDE: a stochastic exponential Runge-Kutta step with one stage at lambda_t + r h (two evaluations per step).

    The stage x_r is the first-order step from t to lambda_t + r h on the
    sample's Brownian path; the full step uses D = (1 - 1/(2r)) m0 + 1/(2r) m_r
    in place of x0_hat, and its noise is the same path's increment over the
    whole step, so stage and step noise are correlated exactly as the SDE says
    (k-diffusion draws them from a Brownian tree too, in sigma and with an
    ancestral split). The step into clean data is deterministic (``final_order``).
    """
    check_options("dpmpp_sde", eta=eta, r=r, final_order=final_order)
    p, src = _setup(process, "dpmpp_sde", x, eta, noise, generator)
    a = 1.0 + eta * eta
    ts = times.tolist()
    hist: list[Evaluation] = []
    for i, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
        m0 = evaluate(denoiser, p, x, t)
        hist = [*hist[-1:], m0]
        a_s, s_s = alpha_sigma(p, s)
        if s_s == 0.0:
            x = report(callback, i, t, s, final_step(p, x, hist, a_s, final_order), m0.x0, project)
            continue
        lam_s = half_log_snr(p, s)
        h = lam_s - m0.lam
        lam_r = lam_s - (1.0 - r) * h if math.isfinite(h) else lam_s
        t_r = float(p.t_from_log_snr(2.0 * lam_r))
        a_r, s_r = alpha_sigma(p, t_r)
        x_r = exponential_step(x, m0, -math.expm1(-a * (lam_r - m0.lam)) * m0.x0, a_r, s_r, lam_r, eta, src)
        m_r = denoiser(x_r, t_r)
        fac = 1.0 / (2.0 * r)
        x = exponential_step(x, m0, -math.expm1(-a * h) * ((1.0 - fac) * m0.x0 + fac * m_r), a_s, s_s, lam_s, eta, src)
        x = report(callback, i, t, s, x, m0.x0, project)
    return x


def exponential_moments(z: float, kmax: int) -> list[float]:
    """g_k(z) = z int_0^1 e^{-z(1-v)} v^k dv for k = 0..kmax: the exponential kernel's moments on a step scaled to [0, 1].

    g_0 = 1 - e^{-z} and g_k = 1 - (k/z) g_{k-1} (integration by parts), which
    is stable for z >= 1; below, the series g_k = z k! sum_m (-z)^m/(m+k+1)!
    avoids the cancellation. g_k -> 1 as z -> inf.
    """
    if z == math.inf:
        return [1.0] * (kmax + 1)
    if z >= 1.0:
        g = [-math.expm1(-z)]
        for k in range(1, kmax + 1):
            g.append(1.0 - k / z * g[-1])
        return g
    out = []
    for k in range(kmax + 1):
        term, total, m = 1.0 / math.factorial(k + 1), 0.0, 0
        while abs(term) > 1e-18 or m < 2:
            total += term
            m += 1
            term *= -z / (m + k + 1)
        out.append(z * math.factorial(k) * total)
    return out


def adams_weights(nodes: list[float], z: float) -> list[float]:
    """b_j = int_0^1 z e^{-z(1-v)} l_j(v) dv for the Lagrange basis l_j through ``nodes`` (in units of the step, 0 = its start).

    x0_hat(lambda_t + v h) ~ sum_j l_j(v) m_j, so alpha_s sum_j b_j m_j is the
    kernel integral of :func:`~udm.samplers.exponential.exponential_step` for
    that polynomial, exactly. sum_j b_j = g_0 = 1 - e^{-z}.
    """
    g = torch.tensor(exponential_moments(z, len(nodes) - 1), dtype=torch.float64)
    vander = torch.tensor([[r**k for k in range(len(nodes))] for r in nodes], dtype=torch.float64)
    return torch.linalg.solve(vander.T, g).tolist()


def _adams_step(x: Tensor, base: Evaluation, points: list[tuple[float, Tensor]], a: float, a_s: float, s_s: float, lam_s: float, eta: float, src: NoiseSource | None) -> Tensor:
    """The step from ``base`` to lambda_s with x0_hat interpolated through ``points`` ((lambda, x0_hat), ``base`` first)."""
    h = lam_s - base.lam
    if len(points) == 1:
        update = -math.expm1(-a * h) * points[0][1]
    else:
        weights = adams_weights([(lam - base.lam) / h for lam, _ in points], a * h)
        update = sum(w * m for w, (_, m) in zip(weights, points))
    return exponential_step(x, base, update, a_s, s_s, lam_s, eta, src)


def sa_solver(
    denoiser: DenoiseFn,
    process: GaussianPath,
    x: Tensor,
    times: Tensor,
    *,
    eta: float = 1.0,
    order: int = 3,
    corrector_order: int = 3,
    lower_order_final: bool = True,
    final_order: int = 1,
    noise: NoiseSource | None = None,
    generator: rng.GeneratorLike = None,
    callback: Callback = None,
    project: Project = None,
) -> Tensor:
    """SA-Solver (Xue et al. 2023): stochastic Adams predictor of ``order`` points and corrector of ``corrector_order`` points.

    Predictor: x0_hat over the step is the Lagrange polynomial in lambda through
    the last ``order`` evaluations, integrated exactly (:func:`adams_weights`).
    After the evaluation at the new point, the corrector re-solves the same step
    from the same start with the polynomial through the new evaluation and the
    last ``corrector_order - 1`` older ones, on the same Brownian increment;
    the evaluation is not repeated, so one step costs one evaluation
    (``corrector_order=0`` turns the corrector off). Orders warm up from 1;
    with ``lower_order_final`` and fewer than 15 steps they are capped by the
    steps left, as in diffusers' SASolverScheduler, whose ``tau`` is this eta.
    """
    check_options("sa_solver", eta=eta, order=order, corrector_order=corrector_order, final_order=final_order)
    p, src = _setup(process, "sa_solver", x, eta, noise, generator)
    a = 1.0 + eta * eta
    ts = times.tolist()
    n = len(ts) - 1
    hist: list[Evaluation] = []
    keep = max(order, corrector_order - 1, 1)
    previous: tuple[Tensor, int] | None = None
    for i, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
        ev = evaluate(denoiser, p, x, t)
        if previous is not None:
            x_prev, kc = previous
            points = [*((e.lam, e.x0) for e in hist[len(hist) - kc :][::-1]), (ev.lam, ev.x0)]
            x = _adams_step(x_prev, hist[-1], points, a, ev.alpha, ev.sigma, ev.lam, eta, src)
        hist = [*hist, ev][-keep:]
        a_s, s_s = alpha_sigma(p, s)
        if s_s == 0.0:
            x = final_step(p, x, hist, a_s, final_order)
            previous = None
        else:
            cap = n - i if lower_order_final and n < 15 else order
            k = min(usable_order(p, hist, order), cap)
            previous = None
            if corrector_order > 0 and math.isfinite(ev.lam):
                kc = usable_order(p, hist, corrector_order - 1) if corrector_order > 1 else 0
                previous = (x, min(kc, cap))
            points = [(e.lam, e.x0) for e in hist[-k:][::-1]]
            x = _adams_step(x, ev, points, a, a_s, s_s, half_log_snr(p, s), eta, src)
        x = report(callback, i, t, s, x, ev.x0, project)
    return x
