"""The three reverse kernels of the unified diffusion model, written once for every process (THEORY §3.1).

Each kernel maps (x_t, x0_hat) at time t to x_s at any earlier time s < t
(step skipping is free: the marginal identity never uses s = t - 1) using only
the :class:`~udm.processes.Process` protocol:

* K0, re-noise:       x_s = F_s(x0_hat, eps'),                       eps' ~ q fresh;
* K1, noise reuse:    x_s = F_s(x0_hat, F_t^{-1}(x0_hat, x_t));
* K2, Gaussian mix:   x_s = F_s(x0_hat, sqrt(1 - r^2) F_t^{-1}(x0_hat, x_t) + r eps'),  r in [0, 1],
  which needs q = N(0, I); r = 0 is K1 and r = 1 is K0.

THEORY §3.1 writes the mixing ratio r as sigma~_t; here it is the option
``mix``, since ``sigma_tilde`` names sigma/alpha on linear processes (THEORY §5.2).
Every kernel takes the options of all three (the ``udm`` loop passes them
alike) and ignores those it does not use.

With the true x0 each kernel sends p(x_t | x0) to p(x_s | x0) exactly; with x0_hat
drawn from the exact posterior p(x0 | x_t) each step's marginal is exact for any
number of steps (THEORY §3.1, consequences 1-2).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from . import rng
from .processes.base import Process
from .registry import Registry

Tensor = torch.Tensor
Kernel = Callable[..., Tensor]
KERNELS: Registry[Kernel] = Registry("kernel")


def refuse_sigma_tilde(options: Mapping[str, object], what: str) -> None:
    """Say so if ``options`` uses the K2 ratio's old name ``sigma_tilde`` (it is ``mix`` now; sigma_tilde is sigma/alpha)."""
    if "sigma_tilde" in options:
        raise ValueError(
            f"{what}: the option 'sigma_tilde' was renamed to 'mix' (the K2 mixing ratio r in [0, 1]; "
            "sigma_tilde means sigma/alpha, THEORY §5.2); pass mix= instead"
        )


@KERNELS.register("K0")
def renoise(
    process: Process, x_t: Tensor, x0_hat: Tensor, t: float, s: float, *, generator: rng.GeneratorLike = None, **options: object
) -> Tensor:
    """K0 (re-noise): x_s = F_s(x0_hat, eps') with fresh eps' ~ q."""
    refuse_sigma_tilde(options, "kernel 'K0'")
    eps = process.sample_noise(x_t.shape, generator, dtype=x_t.dtype, device=x_t.device)
    return process.corrupt(x0_hat, s, eps)


@KERNELS.register("K1")
def reuse(
    process: Process, x_t: Tensor, x0_hat: Tensor, t: float, s: float, *, generator: rng.GeneratorLike = None, **options: object
) -> Tensor:
    """K1 (noise reuse): x_s = F_s(x0_hat, F_t^{-1}(x0_hat, x_t)); deterministic where F_t^{-1} is a function."""
    refuse_sigma_tilde(options, "kernel 'K1'")
    return process.corrupt(x0_hat, s, process.recover_noise(x0_hat, x_t, t, generator=generator))


@KERNELS.register("K2")
def mix(
    process: Process,
    x_t: Tensor,
    x0_hat: Tensor,
    t: float,
    s: float,
    *,
    mix: float = 0.0,
    generator: rng.GeneratorLike = None,
    **options: object,
) -> Tensor:
    """K2 (Gaussian mixing): reuse the recovered noise with weight sqrt(1 - r^2), add fresh noise with weight r = ``mix``."""
    refuse_sigma_tilde(options, "kernel 'K2'")
    r = float(mix)
    if not 0.0 <= r <= 1.0:
        raise ValueError(f"K2 needs mix in [0, 1], got {r:g}")
    if not process.noise_is_standard_normal:
        raise ValueError(f"K2 mixes standard normals, but process {process.name!r} has non-Gaussian noise q; use K0 or K1")
    eps_hat = process.recover_noise(x0_hat, x_t, t, generator=generator)
    if r > 0.0:
        eps_hat = (1.0 - r * r) ** 0.5 * eps_hat + r * rng.randn_like(x_t, generator)
    return process.corrupt(x0_hat, s, eps_hat)
