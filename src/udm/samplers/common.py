"""Small pieces every sampler shares: what each guard suggests instead, per-step scalar coefficients, the callback.

Samplers take a *denoiser callable* ``D(x_t, t) -> x0_hat`` (``udm.sample``
binds the condition and counts evaluations), the process, the start ``x`` and
a grid ``times`` (float64, CPU). Step coefficients are Python floats computed
in float64 from the grid, so nothing in the loop moves tensors between devices.

Every step ends in :func:`report`, which applies the optional per-step
projection ``project(x_s, s, x0_hat=x0_hat) -> x_s`` (conditioning on observed
data, :mod:`udm.conditioning`: ``udm.sample`` binds its generator; the step's
clean estimate stands in for unobserved data where a process mixes
coordinates) and hands the
state to the callback; a sampler continues from what it returns. Without a
projection it returns ``x`` itself, so an unconditional run is unchanged bit
for bit.

A sampler that needs more than the :class:`~udm.processes.base.Process`
protocol says so once, with ``require(process, LinearPath, f"sampler {name!r}", LINEAR_HINT)``
(:func:`udm.processes.base.require`): deterministic samplers only integrate
dx/dt = alpha' x0_hat + sigma' eps_hat, the marginal velocity of any linear
path whatever its noise law (THEORY §8.1); the SDE, DDPM and DDIM samplers
need eps ~ N(0, I) (:class:`~udm.processes.base.GaussianPath`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch

from .. import rng
from ..brownian import BrownianPath
from ..processes.base import LinearPath

Tensor = torch.Tensor
DenoiseFn = Callable[[Tensor, float], Tensor]
Callback = Callable[[dict[str, Any]], None] | None
#: The per-step projection a sampler applies to each new state x_s, ``project(x_s, s, x0_hat=...)``
#: (generator bound by ``udm.sample``; x0_hat is the step's clean estimate, or None).
Project = Callable[..., Tensor] | None

#: What to use instead when a sampler needs a linear process.
LINEAR_HINT = "use the generic 'udm' kernel sampler"
#: What to use instead when a sampler needs Gaussian noise.
GAUSSIAN_HINT = "use an ODE sampler or the generic 'udm' kernel sampler"


@runtime_checkable
class NoiseSource(Protocol):
    """Where a stochastic sampler gets its noise: standardized increments of one Brownian path per sample.

    ``normal(w_a, w_b)`` is (W(w_b) - W(w_a)) / sqrt|w_b - w_a| in the time w of
    :func:`~udm.samplers.coordinates.brownian_time`. :class:`~udm.brownian.BrownianPath`
    is the default; a test may pass any object with this method (e.g. to feed a
    peer library the same increments).
    """

    def normal(self, w_a: float, w_b: float) -> Tensor: ...


def noise_source(noise: NoiseSource | None, generator: rng.GeneratorLike, x: Tensor) -> NoiseSource:
    """``noise`` if given, else per-sample Brownian paths keyed by ``generator`` (one key per sample)."""
    if noise is None:
        return BrownianPath.from_generator(generator, x)
    if not isinstance(noise, NoiseSource):
        raise ValueError(
            f"noise must be a noise source with a normal(w_a, w_b) method such as udm.brownian.BrownianPath, "
            f"got {type(noise).__name__}; leave it out to use per-sample Brownian paths from the seeds"
        )
    return noise


def alpha_sigma(process: LinearPath, t: float) -> tuple[float, float]:
    """(alpha_t, sigma_t) as Python floats (float64 arithmetic)."""
    return float(process.alpha(t)), float(process.sigma(t))


def report(
    callback: Callback, i: int, t: float, s: float, x: Tensor, x0_hat: Tensor | None, project: Project = None
) -> Tensor:
    """End step i (t -> s): project x_s if a projection is given, send the state to the callback, return it.

    Samplers continue from the returned state (``x = report(...)``); it is
    ``x`` itself when ``project`` is None.
    """
    if project is not None:
        x = project(x, s, x0_hat=x0_hat)
    if callback is not None:
        callback({"i": i, "t": t, "s": s, "x": x, "x0_hat": x0_hat})
    return x
