"""Reverse-time SDE samplers: Part 9's family with a free diffusion and predictor-corrector.

THEORY §2.1: for the forward SDE dx = f x dt + g dw, every process

    dx = [f x - (g^2 + sigma_r^2)/2 * score] dt + sigma_r dw     (t from T down to 0)

has the same marginals p_t, whatever sigma_r(t) >= 0: sigma_r = g is the
reverse SDE of Anderson/Song, sigma_r = 0 the probability-flow ODE.
:func:`euler_maruyama` integrates it; :func:`pc` adds Song et al.'s Langevin
corrector. The step into clean data (sigma_s = 0) returns the denoiser's
x0_hat (the "denoise" step of Song et al.), since the score is singular there.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import rng
from ..denoiser import from_x0
from ..processes.base import GaussianPath, require
from .common import GAUSSIAN_HINT, Callback, DenoiseFn, NoiseSource, Project, alpha_sigma, noise_source, report
from .coordinates import brownian_time

Tensor = torch.Tensor


def _diffusion(spec: str | float | Callable[[float], float], g2: float, t: float) -> float:
    """sigma_r(t)^2 from ``diffusion``: "sde" (= g), "ode" (= 0), a factor eta (eta * g) or a function sigma_r(t)."""
    if spec == "sde":
        return g2
    if spec == "ode":
        return 0.0
    if callable(spec):
        return float(spec(t)) ** 2
    if isinstance(spec, (int, float)) and spec >= 0:
        return float(spec) ** 2 * g2
    raise ValueError(f"diffusion must be 'sde', 'ode', a factor >= 0 or a function of t, got {spec!r}")


def _em_step(process: GaussianPath, x: Tensor, x0: Tensor, t: float, s: float, var_r: float, z: Callable[[], Tensor]) -> Tensor:
    """One Euler-Maruyama step of Part 9's reverse SDE from t to s < t; ``z()`` gives the step's standard normal."""
    if float(process.alpha(t)) == 0.0:
        raise ValueError(f"the forward SDE is singular where alpha_t = 0 (t={t:g}); start the grid below t_max")
    f, g2 = (float(v) for v in process.sde(t))
    h = t - s
    score = from_x0(x0, x, t, process, "score")
    x = x - h * (f * x - 0.5 * (g2 + var_r) * score)
    return x + (var_r * h) ** 0.5 * z() if var_r > 0 else x


def euler_maruyama(
    denoiser: DenoiseFn,
    process: GaussianPath,
    x: Tensor,
    times: Tensor,
    *,
    diffusion: str | float | Callable[[float], float] = "sde",
    noise: NoiseSource | None = None,
    generator: rng.GeneratorLike = None,
    callback: Callback = None,
    project: Project = None,
) -> Tensor:
    """Euler-Maruyama on the reverse-SDE family of THEORY §2.1 with free sigma_r(t) (``diffusion``).

    The noise of step t -> s is the standardized increment of the sample's
    Brownian path over [w_t, w_s] (:func:`~udm.samplers.coordinates.brownian_time`),
    so it is the path the exponential SDE solvers of :mod:`udm.samplers.stochastic` walk.
    """
    p = require(process, GaussianPath, "sampler 'euler_maruyama'", GAUSSIAN_HINT)
    src = noise_source(noise, generator, x)
    ts = times.tolist()
    for i, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
        x0 = denoiser(x, t)
        if float(p.sigma(s)) == 0.0:
            x = x0
        else:
            var_r = _diffusion(diffusion, float(p.sde(t)[1]) if p.alpha(t) > 0 else 0.0, t)
            x = _em_step(p, x, x0, t, s, var_r, lambda: src.normal(brownian_time(p, t), brownian_time(p, s)))
        x = report(callback, i, t, s, x, x0, project)
    return x


def pc(
    denoiser: DenoiseFn,
    process: GaussianPath,
    x: Tensor,
    times: Tensor,
    *,
    snr: float = 0.16,
    corrector_steps: int = 1,
    per_sample_norms: bool = False,
    generator: rng.GeneratorLike = None,
    callback: Callback = None,
    project: Project = None,
) -> Tensor:
    """Predictor-corrector (Song et al. 2021, Alg. 2-3): Langevin corrector at t, then a reverse-SDE step.

    Corrector step: x <- x + e score + sqrt(2 e) z with e = 2 a (snr |z| / |score|)^2,
    a = (alpha_s/alpha_t)^2 (1 for VE, 1 - beta_i for VP). As in Song et al. the
    norms are averaged over the batch; ``per_sample_norms=True`` uses each
    sample's own norms, so a sample does not depend on the rest of its batch
    (sound in high dimension, where the norms concentrate).
    """
    p = require(process, GaussianPath, "sampler 'pc'", GAUSSIAN_HINT)
    if corrector_steps < 0 or snr <= 0:
        raise ValueError(f"pc needs corrector_steps >= 0 and snr > 0, got {corrector_steps}, {snr}")
    gen = rng.as_generator(generator)
    ts = times.tolist()
    dims = tuple(range(1, x.ndim))
    for i, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
        a_t, _ = alpha_sigma(p, t)
        a_s, s_s = alpha_sigma(p, s)
        if a_t == 0.0:
            raise ValueError(f"pc needs alpha_t > 0 (t={t:g}); start the grid below t_max")
        a = (a_s / a_t) ** 2
        for _ in range(corrector_steps):
            score = from_x0(denoiser(x, t), x, t, p, "score")
            z = rng.randn_like(x, gen)
            z_norm, s_norm = z.flatten(1).norm(dim=1), score.flatten(1).norm(dim=1)
            ratio = z_norm / s_norm if per_sample_norms else z_norm.mean() / s_norm.mean()
            e = (2 * a * (snr * ratio) ** 2).reshape(-1, *([1] * len(dims)))
            x = x + e * score + torch.sqrt(2 * e) * z
        x0 = denoiser(x, t)
        x = x0 if s_s == 0.0 else _em_step(p, x, x0, t, s, float(p.sde(t)[1]), lambda: rng.randn_like(x, gen))
        x = report(callback, i, t, s, x, x0, project)
    return x
