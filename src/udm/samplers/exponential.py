"""Exponential-integrator multistep solvers of the PF-ODE in half log-SNR (DPM-Solver++, UniPC).

With lambda = log(alpha/sigma) and the data prediction x0_hat, the PF-ODE of
any Gaussian process (THEORY §5.2, O2; §4.1 for DDIM) integrates exactly in
its linear part (Lu et al. 2022, "DPM-Solver++", eq. 9):

    x_s = (sigma_s/sigma_t) x_t + sigma_s * integral_{lambda_t}^{lambda_s} e^lambda x0_hat(lambda) dlambda,

and a multistep method approximates x0_hat(lambda) by a polynomial through
the last evaluations. With h = lambda_s - lambda_t and phi_1(h) = 1 - e^{-h}:

* order 1 is DDIM: x_s = (sigma_s/sigma_t) x_t + alpha_s phi_1 x0_hat_t;
* ``dpmpp_2m`` is DPM-Solver++(2M) in the "midpoint" form of diffusers'
  DPMSolverMultistepScheduler; ``dpmpp_3m`` is DPM-Solver++(3M) with the
  third-order coefficient (the published form, ``diffusers_compat=True``, is
  second order; see its docstring);
* ``unipc`` is UniPC (Zhao et al. 2023): the multistep predictor UniP plus
  the corrector UniC, which re-solves the last step with the evaluation at
  the new point included, so it raises the order by one at no extra cost.

The step into clean data (sigma_s = 0, lambda_s = +inf) cannot use a
polynomial in lambda; it is first order (x_0 = x0_hat, "Tweedie"), as in
DPM-Solver and diffusers, unless ``final_order=2``: then it is an
Adams-Bashforth step in the VE variable sigma~ = sigma/alpha (the ``"sigma"``
variable of :class:`~udm.samplers.coordinates.ODEView`), where y = x/alpha
obeys dy/dsigma~ = eps_hat, finite at sigma~ = 0 (THEORY §5.2, "mapping VP to
VE"); eps_hat is extrapolated linearly from the last two evaluations:

    y_0 = y_1 - sigma~_1 e_1 + sigma~_1^2 / (2 (sigma~_2 - sigma~_1)) (e_2 - e_1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..processes.base import LinearPath, require
from .common import LINEAR_HINT, Callback, DenoiseFn, NoiseSource, Project, alpha_sigma, report
from .coordinates import ODEView, finite_level, half_log_snr

Tensor = torch.Tensor


@dataclass
class Evaluation:
    """One denoiser evaluation: where it was made and what it returned (eps_hat at the evaluated state)."""

    t: float
    lam: float
    alpha: float
    sigma: float
    x0: Tensor
    eps: Tensor


def evaluate(denoiser: DenoiseFn, p: LinearPath, x: Tensor, t: float) -> Evaluation:
    a, s = alpha_sigma(p, t)
    x0 = denoiser(x, t)
    eps = (x - a * x0) / s if s > 0 else torch.zeros_like(x)
    return Evaluation(t, half_log_snr(p, t), a, s, x0, eps)


def check_final_order(final_order: int) -> None:
    if final_order not in (1, 2):
        raise ValueError(f"final_order must be 1 (x0_hat) or 2 (Adams-Bashforth in sigma/alpha), got {final_order}")


def final_step(p: LinearPath, x: Tensor, hist: list[Evaluation], a_s: float, final_order: int) -> Tensor:
    """The step into clean data: x0_hat of the last evaluation, or AB2 in sigma~ (module docstring)."""
    last = hist[-1]
    if final_order == 1 or len(hist) < 2 or not finite_level(p, hist[-2].t):
        return a_s * last.x0
    prev, view = hist[-2], ODEView(p, "sigma")
    u1, u2 = view.u(last.t), view.u(prev.t)
    y = view.to_state(x, last.t) - u1 * last.eps + (0.5 * u1 * u1 / (u2 - u1)) * (prev.eps - last.eps)
    return a_s * y


def usable_order(p: LinearPath, hist: list[Evaluation], order: int) -> int:
    """The largest order <= ``order`` whose history points all have a finite lambda (sigma~ finite, alpha > 0)."""
    k = 1
    while k < min(order, len(hist)) and finite_level(p, hist[-1 - k].t):
        k += 1
    return k


def dpmpp_2m(
    denoiser: DenoiseFn,
    process: LinearPath,
    x: Tensor,
    times: Tensor,
    *,
    lower_order_final: bool = True,
    final_order: int = 1,
    callback: Callback = None,
    project: Project = None,
) -> Tensor:
    """DPM-Solver++(2M): second-order multistep in lambda, data prediction (Lu et al. 2022, Alg. 2).

    With r = h_prev / h the step uses D = (1 + 1/(2r)) x0_hat_t - 1/(2r) x0_hat_prev
    in place of x0_hat_t ("midpoint" form). The first step, the step into
    clean data (see ``final_order``) and, with ``lower_order_final`` as in
    diffusers when there are fewer than 15 steps, the last step are first order.
    """
    p = require(process, LinearPath, "sampler 'dpmpp_2m'", LINEAR_HINT)
    return dpmpp_multistep(denoiser, p, x, times, 2, lower_order_final, final_order, False, callback, project)


def dpmpp_3m(
    denoiser: DenoiseFn,
    process: LinearPath,
    x: Tensor,
    times: Tensor,
    *,
    lower_order_final: bool = True,
    final_order: int = 1,
    diffusers_compat: bool = False,
    callback: Callback = None,
    project: Project = None,
) -> Tensor:
    """DPM-Solver++(3M): third-order multistep in lambda, data prediction (Lu et al. 2022).

    With m0, m1, m2 the last three x0_hat, h = lambda_s - lambda_t, r0 = h_0/h, r1 = h_1/h
    (h_0, h_1 the previous two steps) and phi_1 = 1 - e^{-h}:

        D1_0 = (m0 - m1)/r0,  D1_1 = (m1 - m2)/r1,
        D1 = D1_0 + r0/(r0 + r1) (D1_0 - D1_1) ~ h x0',  D2 = (D1_0 - D1_1)/(r0 + r1) ~ h^2 x0''/2,
        x_s = (sigma_s/sigma_t) x_t + alpha_s [phi_1 m0 + (1 - phi_1/h) D1 + c D2],
        c = 1 - 2 (h - phi_1)/h^2,

    since integral_0^h e^{u-h} u^2/2 du = (h^2 - 2h + 2 phi_1)/2 (exact for quadratic x0(lambda)).
    The published implementations (LuChengTHU/dpm-solver, diffusers'
    DPMSolverMultistepScheduler, k-diffusion) use c/2 = 1/2 - (h - phi_1)/h^2,
    which is only second order; ``diffusers_compat=True`` reproduces them.

    Start-up is order 1, then 2, then 3. The step into clean data is order
    ``final_order``; with ``lower_order_final`` and fewer than 15 steps the
    last two steps are orders 1 and 2 (diffusers' schedule).
    """
    p = require(process, LinearPath, "sampler 'dpmpp_3m'", LINEAR_HINT)
    return dpmpp_multistep(denoiser, p, x, times, 3, lower_order_final, final_order, diffusers_compat, callback, project)


def exponential_step(
    x: Tensor, base: Evaluation, update: Tensor, a_s: float, s_s: float, lam_s: float, eta: float, noise: NoiseSource | None
) -> Tensor:
    """One step of the reverse-SDE family (THEORY §2.1, sigma_r = eta g) from ``base`` to lambda_s, exact in its linear and noise parts.

    With k = eta^2 and h = lambda_s - lambda_t,

        x_s = (sigma_s/sigma_t) e^{-k h} x_t + alpha_s update + sigma_s sqrt(1 - e^{-2 k h}) z,

    where ``update`` = integral of (1+k) e^{-(1+k)(lambda_s - lambda)} x0_hat(lambda) dlambda
    (phi_1 x0_hat with phi_1 = 1 - e^{-(1+k)h} for a constant x0_hat) and z is the
    standardized increment of ``noise`` over [w_t, w_s] (:func:`brownian_time`).
    eta = 0 is the PF-ODE step of DPM-Solver++; eta = 1 the reverse SDE, whose
    noise for a frozen x0_hat this z gives exactly. Where alpha_t = 0
    (lambda_t = -inf) the decay is 0 for eta > 0.
    """
    k = eta * eta
    decay = s_s / base.sigma
    if k > 0:
        decay *= math.exp(-k * (lam_s - base.lam))
    x = decay * x + a_s * update
    if k > 0 and noise is not None:
        h = lam_s - base.lam
        w_t = 0.0 if base.lam == -math.inf else math.exp(2.0 * base.lam)
        x = x + (s_s * math.sqrt(-math.expm1(-2.0 * k * h))) * noise.normal(w_t, math.exp(2.0 * lam_s))
    return x


def dpmpp_multistep(
    denoiser: DenoiseFn,
    p: LinearPath,
    x: Tensor,
    times: Tensor,
    max_order: int,
    lower_order_final: bool,
    final_order: int,
    diffusers_compat: bool,
    callback: Callback,
    project: Project,
    eta: float = 0.0,
    noise: NoiseSource | None = None,
) -> Tensor:
    """The DPM-Solver++ multistep loop up to ``max_order`` (2 or 3; formulas in :func:`dpmpp_3m`), for eta >= 0.

    With a = 1 + eta^2 (:func:`exponential_step`) every coefficient is the ODE's
    with h replaced by a h: order 2 is the "midpoint" 2M step phi_1 (m0 + D1/2),
    order 3 adds (1 - phi_1/(a h)) D1 + c D2 with c = 1 - 2/(a h) + 2 phi_1/(a h)^2
    (half of it with ``diffusers_compat``). At eta = 0 every expression is the
    PF-ODE solver's own, so :func:`dpmpp_2m`/:func:`dpmpp_3m` run through here unchanged.
    """
    check_final_order(final_order)
    ts = times.tolist()
    n = len(ts) - 1
    hist: list[Evaluation] = []
    a = 1.0 + eta * eta
    for i, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
        hist = [*hist[-(max_order - 1) :], evaluate(denoiser, p, x, t)]
        a_s, s_s = alpha_sigma(p, s)
        if s_s == 0.0:
            x = final_step(p, x, hist, a_s, final_order)
            x = report(callback, i, t, s, x, hist[-1].x0, project)
            continue
        order = usable_order(p, hist, max_order)
        if lower_order_final and n < 15:
            order = min(order, n - i)
        m0 = hist[-1]
        lam_s = half_log_snr(p, s)
        h = lam_s - m0.lam
        ah = a * h
        phi = -math.expm1(-ah)
        update = phi * m0.x0
        if order >= 2:
            r0 = (m0.lam - hist[-2].lam) / h
            d1_0 = (m0.x0 - hist[-2].x0) / r0
            if order == 2:
                update = update + (0.5 * phi) * d1_0
            else:
                r1 = (hist[-2].lam - hist[-3].lam) / h
                d1_1 = (hist[-2].x0 - hist[-3].x0) / r1
                d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                c2 = 0.5 - (ah - phi) / (ah * ah)
                update = update + (1 - phi / ah) * d1 + (c2 if diffusers_compat else 2.0 * c2) * d2
        x = exponential_step(x, m0, update, a_s, s_s, lam_s, eta, noise)
        x = report(callback, i, t, s, x, m0.x0, project)
    return x


def _unipc_rhos(rks: list[float], h: float, variant: str, corrector: bool) -> tuple[list[float], float]:
    """UniPC's coefficients rho and B(h) for data prediction (Zhao et al. 2023, Alg. 2 and eq. 8).

    With hh = -h, phi_1 = e^{hh} - 1 and the recursion phi_{k+1} = phi_k/hh - 1/(k+1)!
    (phi_1/hh - 1 to start), solve R rho = b where R_{ij} = r_j^{i-1} and
    b_i = i! phi_{i+1}/B(h); B(h) = hh ("bh1") or e^{hh} - 1 ("bh2"). The
    predictor drops the last row and column (r = 1 is the new point) and uses
    rho = 1/2 for order 2; the corrector keeps them and uses rho = 1/2 for order 1.
    """
    hh = -h
    b_h = hh if variant == "bh1" else math.expm1(hh)
    order = len(rks)
    if (corrector and order == 1) or (not corrector and order == 2):
        return [0.5], b_h
    phi_k = math.expm1(hh) / hh - 1.0
    fact, b = 1.0, []
    for i in range(1, order + 1):
        b.append(phi_k * fact / b_h)
        fact *= i + 1
        phi_k = phi_k / hh - 1.0 / fact
    m = order if corrector else order - 1
    if m == 0:
        return [], b_h
    r = torch.tensor([[rk**i for rk in rks[:m]] for i in range(m)], dtype=torch.float64)
    rho = torch.linalg.solve(r, torch.tensor(b[:m], dtype=torch.float64))
    return rho.tolist(), b_h


def _unipc_update(
    x: Tensor, base: Evaluation, older: list[Evaluation], a_s: float, s_s: float, lam_s: float, variant: str, new_x0: Tensor | None
) -> Tensor:
    """One UniP (``new_x0`` None) or UniC step from ``base`` to lambda_s using the ``older`` evaluations (newest first).

    x_s = (sigma_s/sigma_t) x_t + alpha_s phi_1 m0 - alpha_s B(h) sum_k rho_k D_k with
    D_k = (m_k - m0)/r_k and r_k = (lambda_k - lambda_t)/h for the older points,
    plus D = m_new - m0 (r = 1) for the corrector.
    """
    h = lam_s - base.lam
    rks = [(e.lam - base.lam) / h for e in older] + [1.0]
    ds = [(e.x0 - base.x0) / rk for e, rk in zip(older, rks)]
    if new_x0 is not None:
        ds.append(new_x0 - base.x0)
    rhos, b_h = _unipc_rhos(rks, h, variant, corrector=new_x0 is not None)
    x = (s_s / base.sigma) * x + (a_s * -math.expm1(-h)) * base.x0
    if ds:
        x = x - (a_s * b_h) * sum(rho * d for rho, d in zip(rhos, ds))
    return x


def unipc(
    denoiser: DenoiseFn,
    process: LinearPath,
    x: Tensor,
    times: Tensor,
    *,
    order: int = 2,
    variant: str = "bh2",
    corrector: bool = True,
    lower_order_final: bool = True,
    final_order: int = 1,
    callback: Callback = None,
    project: Project = None,
) -> Tensor:
    """UniPC-p (Zhao et al. 2023): multistep predictor UniP-p plus corrector UniC-p, data prediction.

    After each evaluation x0_hat(x_i, t_i), UniC re-solves the step t_{i-1} -> t_i
    with that evaluation included (order p + 1) and the result replaces x_i; the
    evaluation itself is not repeated, so the corrector costs no extra NFE. On a
    grid ending at a positive time with ``lower_order_final=False``, UniPC-p
    converges with order p + 1 (tests/test_diffusers_parity.py).

    ``variant`` picks UniPC's B(h) = h ("bh1") or e^h - 1 ("bh2"), evaluated at
    -h for data prediction. The order warms up 1, 2, ..., p; with
    ``lower_order_final`` the last steps are capped by the number of steps
    left, as in diffusers' UniPCMultistepScheduler; the step into clean data is
    order ``final_order`` (module docstring). The defaults reproduce diffusers;
    for few-step unconditional sampling benchmarks/RESULTS.md recommends
    order=3, variant="bh1" below 10 steps, final_order=2 and grid="quadratic".
    """
    p = require(process, LinearPath, "sampler 'unipc'", LINEAR_HINT)
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"variant must be 'bh1' or 'bh2', got {variant!r}")
    check_final_order(final_order)
    ts = times.tolist()
    n = len(ts) - 1
    hist: list[Evaluation] = []
    x_prev, prev_order = x, 1
    for i, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
        ev = evaluate(denoiser, p, x, t)
        if corrector and hist and finite_level(p, hist[-1].t):
            base, older = hist[-1], hist[-prev_order:-1][::-1]
            x = _unipc_update(x_prev, base, older, ev.alpha, ev.sigma, ev.lam, variant, ev.x0)
        hist = [*hist[-max(order, 2) + 1 :], ev]
        a_s, s_s = alpha_sigma(p, s)
        if s_s == 0.0:
            x = final_step(p, x, hist, a_s, final_order)
        else:
            k = min(min(order, n - i) if lower_order_final else order, usable_order(p, hist, order))
            x_prev, prev_order = x, k
            x = _unipc_update(x, ev, hist[-k:-1][::-1], a_s, s_s, half_log_snr(p, s), variant, None)
        x = report(callback, i, t, s, x, ev.x0, project)
    return x
