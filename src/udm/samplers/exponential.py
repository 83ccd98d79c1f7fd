"""Exponential-integrator multistep solvers of the PF-ODE in half log-SNR (Lu et al. 2022, DPM-Solver++).

With lambda = log(alpha/sigma) and the data prediction x0_hat, the PF-ODE of
any Gaussian process integrates exactly in its linear part:

    x_s = (sigma_s/sigma_t) x_t + sigma_s * integral_{lambda_t}^{lambda_s} e^lambda x0_hat(lambda) dlambda,

and a multistep method approximates x0_hat(lambda) by a polynomial through
the last evaluations. Order 1 is DDIM; ``dpmpp_2m`` is DPM-Solver++(2M) with
the "midpoint" form of diffusers' DPMSolverMultistepScheduler.
"""

from __future__ import annotations

import math

import torch

from .common import Callback, DenoiseFn, alpha_sigma, report, require_gaussian
from ..processes.gaussian import GaussianProcess

Tensor = torch.Tensor


def half_log_snr(process: GaussianProcess, t: float) -> float:
    """lambda_t = log(alpha_t / sigma_t) (+inf on clean data, -inf where alpha_t = 0)."""
    a, s = alpha_sigma(process, t)
    if s == 0.0:
        return math.inf
    if a == 0.0:
        return -math.inf
    return math.log(a) - math.log(s)


def dpmpp_2m(
    denoiser: DenoiseFn,
    process: GaussianProcess,
    x: Tensor,
    times: Tensor,
    *,
    lower_order_final: bool = True,
    callback: Callback = None,
) -> Tensor:
    """DPM-Solver++(2M): second-order multistep in lambda, data prediction (Lu et al. 2022, Alg. 2).

    The first step, any step into clean data, and (``lower_order_final``, as in
    diffusers when there are fewer than 15 steps) the last step are first order.
    """
    p = require_gaussian(process, "dpmpp_2m")
    ts = times.tolist()
    n = len(ts) - 1
    x0_prev, h_prev = None, None
    for i, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
        x0 = denoiser(x, t)
        a_s, s_s = alpha_sigma(p, s)
        _, s_t = alpha_sigma(p, t)
        h = half_log_snr(p, s) - half_log_snr(p, t)
        phi = -math.expm1(-h)  # 1 - e^{-h}
        first_order = x0_prev is None or s_s == 0.0 or (lower_order_final and i == n - 1 and n < 15)
        if first_order or not math.isfinite(h_prev):
            d = x0
        else:
            r = h_prev / h
            d = (1 + 0.5 / r) * x0 - (0.5 / r) * x0_prev
        x = (s_s / s_t) * x + (a_s * phi) * d
        report(callback, i, t, s, x, x0)
        x0_prev, h_prev = x0, h
    return x
