"""Small pieces every sampler shares: the Gaussian-process check and per-step scalar coefficients.

Samplers take a *denoiser callable* ``D(x_t, t) -> x0_hat`` (``udm.sample``
binds the condition and counts evaluations), the process, the start ``x`` and
a grid ``times`` (float64, CPU). Step coefficients are Python floats computed
in float64 from the grid, so nothing in the loop moves tensors between devices.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..processes.base import Process
from ..processes.gaussian import GaussianProcess, LinearProcess
from ..processes.gaussian import require_gaussian as gaussian_or_error
from ..processes.gaussian import require_linear as linear_or_error

Tensor = torch.Tensor
DenoiseFn = Callable[[Tensor, float], Tensor]
Callback = Callable[[dict[str, Any]], None] | None


def require_gaussian(process: Process, sampler: str) -> GaussianProcess:
    """``process`` if it is Gaussian (alpha_t, sigma_t, eps ~ N(0, I)), else a clear error naming the sampler."""
    return gaussian_or_error(process, f"sampler {sampler!r}", "use an ODE sampler or the generic 'udm' kernel sampler")


def require_linear(process: Process, sampler: str) -> LinearProcess:
    """``process`` if it is linear (alpha_t, sigma_t; any noise law), else a clear error naming the sampler.

    Deterministic samplers only integrate dx/dt = alpha' x0_hat + sigma' eps_hat,
    which is the marginal velocity of a linear path whatever the noise law (THEORY §8.1).
    """
    return linear_or_error(process, f"sampler {sampler!r}", "use the generic 'udm' kernel sampler")


def alpha_sigma(process: GaussianProcess, t: float) -> tuple[float, float]:
    """(alpha_t, sigma_t) as Python floats (float64 arithmetic)."""
    return float(process.alpha(t)), float(process.sigma(t))


def report(callback: Callback, i: int, t: float, s: float, x: Tensor, x0_hat: Tensor | None) -> None:
    """Send one step's state to the user's callback (trajectories, progress bars)."""
    if callback is not None:
        callback({"i": i, "t": t, "s": s, "x": x, "x0_hat": x0_hat})
