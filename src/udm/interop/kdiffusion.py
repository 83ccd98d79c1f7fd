"""The k-diffusion / EDM calling convention, both ways (THEORY §0.2, §5.2; Karras et al. 2022, §2).

k-diffusion's and EDM's networks are denoisers in the variance-exploding
coordinates: ``model(x, sigma, **cond) -> D(x; sigma)`` with x = x0 + sigma eps,
the posterior-mean estimate of x0. Any linear udm process x_t = alpha x0 + sigma eps
is the same family read in other coordinates: x = x_t / alpha, sigma~ = sigma / alpha
(the ``sigma`` ODE variable of :mod:`udm.samplers.ode`). So:

* :func:`from_kdiffusion` wraps such a callable as a :class:`~udm.Denoiser` on
  udm's ``edm`` process (alpha = 1, sigma = t) with the ``x0`` parameterization,
  the network fed the raw (x, sigma): every udm sampler, likelihood and guidance
  then drives it;
* :func:`to_kdiffusion` exposes any udm denoiser on a linear process as such a
  callable, D(x; sigma~) = x0_hat(alpha(t) x, t) with t the time where
  sigma_t / alpha_t = sigma~, so k-diffusion-style sampler code drives udm models.

Wrapping both ways is the identity (tests/test_interop_kdiffusion.py, float64).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..denoiser import Denoiser
from ..processes import get_process
from ..processes.base import LinearPath, require

Tensor = torch.Tensor

#: The keyword under which k-diffusion's wrappers pass a condition (EDM's networks call it ``class_labels``).
COND_KEY = "cond"


class KarrasNet(nn.Module):
    """``model(x, sigma, **{cond_key: cond})`` as a udm network ``net(x_t, t[, cond])`` on a process with x_t = x0 + t eps."""

    def __init__(self, model: Callable[..., Tensor], cond_key: str = COND_KEY) -> None:
        super().__init__()
        self.model, self.cond_key = model, cond_key

    def forward(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        return self.model(x, t) if cond is None else self.model(x, t, **{self.cond_key: cond})


def from_kdiffusion(
    model: Callable[..., Tensor], *, sigma_min: float = 0.002, sigma_max: float = 80.0, cond_key: str = COND_KEY
) -> Denoiser:
    """A udm Denoiser of a k-diffusion / EDM denoiser ``model(x, sigma, **cond) -> x0_hat``.

    The process is udm's ``edm`` on [sigma_min, sigma_max] (the range the model
    was trained on: EDM's defaults 0.002 and 80); a condition passed to the
    Denoiser reaches the model as the keyword ``cond_key``.
    """
    return Denoiser(KarrasNet(model, cond_key), get_process("edm", sigma_min=sigma_min, sigma_max=sigma_max), "x0")


class KarrasDenoiser(nn.Module):
    """A udm denoiser seen through the k-diffusion convention: ``D(x, sigma, cond=None) -> x0_hat``.

    ``x`` is in the variance-exploding coordinates x = x_t / alpha_t and ``sigma``
    is sigma~ = sigma_t / alpha_t (a number or one per sample); the time is
    ``process.t_from_sigma_tilde(sigma)``.
    """

    def __init__(self, denoiser: Callable[..., Tensor], process: LinearPath | None = None) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.process = require(process if process is not None else denoiser.process, LinearPath,
                               "the k-diffusion convention (x = x_t / alpha, sigma = sigma_t / alpha)")

    def forward(self, x: Tensor, sigma: float | Tensor, cond: Any = None) -> Tensor:
        s = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1)
        t = self.process.t_from_sigma_tilde(s)
        alpha = self.process.alpha(t).reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        t = t if t.numel() > 1 else t.reshape(())
        return self.denoiser(alpha * x, t) if cond is None else self.denoiser(alpha * x, t, cond)


def to_kdiffusion(denoiser: Callable[..., Tensor], process: LinearPath | None = None) -> KarrasDenoiser:
    """Expose a udm denoiser (default process: the one it carries) as ``D(x, sigma, cond=None)`` for k-diffusion samplers."""
    return KarrasDenoiser(denoiser, process)
