"""Kernel samplers: the generic UDM loop (THEORY §3.2, U2), DDIM(eta) and DDPM ancestral (§4.1).

All three alternate "predict x0_hat = D(x_t, t)" and "correct with a reverse
kernel". DDIM(eta) is K2 on the Gaussian process with mixing ratio
mix = eta * std[q(x_s | x_t, x0)] / sigma_s; DDPM ancestral draws from
q(x_s | x_t, x0_hat) itself. Both take that posterior from ``process.posterior``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import rng
from ..kernels import KERNELS
from ..processes.base import GaussianPath, Process, require
from .common import GAUSSIAN_HINT, Callback, DenoiseFn, Project, alpha_sigma, report

Tensor = torch.Tensor
_ZERO = torch.zeros((), dtype=torch.float64)


def udm(
    denoiser: DenoiseFn,
    process: Process,
    x: Tensor,
    times: Tensor,
    *,
    kernel: str = "K1",
    mix: float | Callable[[float, float], float] = 0.0,
    generator: rng.GeneratorLike = None,
    callback: Callback = None,
    project: Project = None,
) -> Tensor:
    """U2 for any process: x0_hat from D(x_t, t), then x_s ~ kernel(x_t, x0_hat) with K0, K1 or K2.

    x0_hat is ``process.estimate_x0`` of the denoiser's output (the output
    itself for continuous data, a token draw from logits for discrete data),
    and the result is ``process.finish`` of the last state (x0_hat for the
    encoder model, THEORY §4.5).

    ``mix`` (K2 only) is the mixing ratio in [0, 1] (THEORY §3.1's sigma~_t), a number or a function of (t, s).
    """
    step = KERNELS.get(kernel)
    gen = rng.as_generator(generator)
    ts = times.tolist()
    x0 = None
    for i, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
        x0 = process.estimate_x0(denoiser(x, t), x, t, generator=gen)
        r = mix(t, s) if callable(mix) else mix
        x = step(process, x, x0, t, s, mix=r, generator=gen)
        x = report(callback, i, t, s, x, x0, project)
    return process.finish(x, x0)


def udm_baseline(denoiser: DenoiseFn, process: Process, x: Tensor, times: Tensor, **options) -> Tensor:
    """The UDM loop with the re-noising kernel K0 (THEORY §3.1, baseline)."""
    return udm(denoiser, process, x, times, kernel="K0", **options)


def udm_deterministic(denoiser: DenoiseFn, process: Process, x: Tensor, times: Tensor, **options) -> Tensor:
    """The UDM loop with the noise-reuse kernel K1 (THEORY §3.1, deterministic)."""
    return udm(denoiser, process, x, times, kernel="K1", **options)


def _posterior_var(process: GaussianPath, t: float, s: float) -> float:
    """Var[q(x_s | x_t, x0)] = sigma_{t|s}^2 sigma_s^2 / sigma_t^2 from ``process.posterior`` (THEORY §4.1, DDPM row).

    The variance does not depend on (x_t, x0); reading it at float64 zeros keeps
    it in float64 whatever the samples' dtype. Rounding below 0 counts as 0.
    """
    return max(float(process.posterior(_ZERO, _ZERO, t, s)[1]), 0.0)


def ddim(
    denoiser: DenoiseFn,
    process: GaussianPath,
    x: Tensor,
    times: Tensor,
    *,
    eta: float = 0.0,
    generator: rng.GeneratorLike = None,
    callback: Callback = None,
    project: Project = None,
) -> Tensor:
    """DDIM(eta) (Song et al. 2021) = K2 with mix = eta * posterior std / sigma_s (THEORY §4.1)."""
    p = require(process, GaussianPath, "sampler 'ddim'", GAUSSIAN_HINT)
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")

    def r(t: float, s: float) -> float:
        s_s = float(p.sigma(s))
        return min(eta * _posterior_var(p, t, s) ** 0.5 / s_s, 1.0) if s_s > 0 else 0.0

    return udm(denoiser, p, x, times, kernel="K2", mix=r, generator=generator, callback=callback, project=project)


def ddpm(
    denoiser: DenoiseFn,
    process: GaussianPath,
    x: Tensor,
    times: Tensor,
    *,
    variance: str = "small",
    generator: rng.GeneratorLike = None,
    callback: Callback = None,
    project: Project = None,
) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020): x_s = mean[q(x_s | x_t, x0_hat)] + std z.

    ``variance="small"`` uses the posterior variance (beta-tilde); ``"large"``
    uses sigma_{t|s}^2 = sigma_t^2 - (alpha_t/alpha_s)^2 sigma_s^2 (DDPM's beta_t).
    No noise is added on the step into clean data.
    """
    p = require(process, GaussianPath, "sampler 'ddpm'", GAUSSIAN_HINT)
    if variance not in ("small", "large"):
        raise ValueError(f"variance must be 'small' or 'large', got {variance!r}")
    gen = rng.as_generator(generator)
    ts = times.tolist()
    for i, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
        x0 = denoiser(x, t)
        mean, _ = p.posterior(x, x0, t, s)
        a_t, s_t = alpha_sigma(p, t)
        a_s, s_s = alpha_sigma(p, s)
        if s_s > 0:
            var = _posterior_var(p, t, s) if variance == "small" else max(s_t**2 - (a_t / a_s) ** 2 * s_s**2, 0.0)
            x = mean + var**0.5 * rng.randn_like(x, gen)
        else:
            x = mean
        x = report(callback, i, t, s, x, x0, project)
    return x
