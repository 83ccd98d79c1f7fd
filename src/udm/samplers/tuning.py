"""Per-model time grids: fit a sampler's grid to one denoiser on pilot noise.

A fixed grid (uniform, quadratic, Karras, log-SNR) depends only on the
schedule. The best grid for a few-step solver also depends on the data: where
along the path the denoiser's output bends, and how large the last step into
clean data may be. "Align Your Steps" (Sabour, Fidler and Kreis 2024,
arXiv:2404.14507) and "Accelerating diffusion sampling with optimized time
steps" (Xue, Lu, Wang, Zhang, Li, Zhu and Liu, CVPR 2024, arXiv:2402.17376)
therefore choose the grid per model by optimisation. :func:`optimize_grid`
does the simplest version of that: for a set of *pilot* starting noises it
computes a fine solution of the probability-flow ODE once, then moves the
interior grid points to minimise the sampler's endpoint error on that batch.

The grid is a property of the model and the solver, not of the batch: fit it
on pilot noise drawn with seeds disjoint from the noise you evaluate or sample
with, and judge it on fresh noise (``benchmarks/RESULTS.md`` does). Use a
large pilot batch. With few steps, the mean squared error is dominated by
rare samples near a boundary between modes that the solver sends to the
wrong mode; a small pilot holds only a handful of them, and the optimiser
then fits those few instead of lowering the rate at which they occur. On the
64-D mixture of ``benchmarks/samplers.py`` 256 or 1024 pilot samples overfit
in this way, while 2048 gave a pilot error close to the error on fresh noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..processes.base import LinearPath, Process
from .coordinates import ODEView, finite_level, karras_level
from .grids import get_grid
from .run import SAMPLERS, process_of, sample

Tensor = torch.Tensor

#: Samplers whose steps are not set by the grid (adaptive) and so have no grid to fit.
_ADAPTIVE = ("rk45",)


def _level(process: Process, rho: float, t0: float) -> tuple[Callable[[float], float], Callable[[float], float]]:
    """The coordinate the grid is parameterised in, and its inverse: sigma~^(1/rho) (:func:`karras_level`) where
    the process is linear with a finite sigma~ at the start ``t0``, else t itself (e.g. rectified flow from t = 1)."""
    if not (isinstance(process, LinearPath) and finite_level(process, t0)):
        return float, float
    level, time = karras_level(process, rho)
    return level, lambda u: float(time(torch.tensor(u, dtype=torch.float64)))


def _reference(denoiser: Callable[..., Tensor], process: Process, x_pilot: Tensor, t0: float, t1: float, rtol: float) -> Tensor:
    """The PF-ODE endpoint for the pilot batch: adaptive dopri5 (udm's ``rk45``) in the sigma~ variable.

    When the grid ends on clean data, rk45 integrates to sigma~ = 1e-5 and takes
    the Tweedie step from there (error O(sigma~^2) = O(1e-10) for smooth data).
    """
    view = ODEView(process, "sigma") if isinstance(process, LinearPath) else None
    if view is None or not view.is_clean(t1):
        times = [t0, t1]
    else:
        t_ref = view.t(1e-5)
        times = [t0, t_ref, t1] if t1 < t_ref < t0 else [t0, t1]
    return sample(
        denoiser, "rk45", times=times, x_T=x_pilot, process=process, rtol=rtol, atol=rtol, dtype=torch.float64
    )


def optimize_grid(
    denoiser: Callable[..., Tensor],
    sampler: str,
    steps: int,
    x_pilot: Tensor,
    *,
    process: Process | None = None,
    init: str | Tensor | Sequence[float] = "quadratic",
    reference: Tensor | None = None,
    max_evals: int | None = None,
    rho: float = 7.0,
    reference_rtol: float = 1e-8,
    return_info: bool = False,
    **sampler_options: Any,
) -> Tensor | tuple[Tensor, dict[str, Any]]:
    """A time grid of ``steps`` steps fitted to ``denoiser`` and ``sampler`` on the pilot noise ``x_pilot``.

    The method of "Align Your Steps" (Sabour et al. 2024) and of Xue et al.
    (2024, "Accelerating diffusion sampling with optimized time steps") in
    its plainest form:

    1. a fine reference x_0^ref for the pilot batch is computed once (udm's
       adaptive ``rk45`` in the sigma~ = sigma/alpha variable at
       rtol = atol = ``reference_rtol``), unless ``reference`` is given;
    2. the grid's ends are kept (those of ``init``: by default t_max and the
       clean end t_min) and its ``steps - 1`` interior points are
       parameterised monotonically: with u = sigma~^(1/rho) (Karras et al.'s
       coordinate; plain t where sigma~ is infinite at the start, as for
       rectified flow at t = 1, or undefined), the steps in u are
       the softmax of ``steps`` logits, the first fixed at 0, times the span;
    3. Nelder-Mead (scipy) minimises the pilot endpoint MSE,
       mean |sampler(x_pilot; grid) - x_0^ref|^2, over the logits, starting
       from ``init`` and restarting once from the best point.

    Args:
        denoiser: a :class:`~udm.Denoiser` or any ``(x, t) -> x0_hat`` with ``process=``.
        sampler: a deterministic, fixed-step name in ``udm.SAMPLERS`` (e.g.
            "unipc", "dpmpp_3m", "dpmpp_2m", "ddim", "heun").
        steps: the number of sampler steps (>= 2; with one step there is no interior point).
        x_pilot: the pilot starting noises x_T, a batch (n, ...) with n >= 1. Draw
            them with seeds disjoint from the noise the grid will be used on; the
            pilot error is an optimistic estimate of the error on fresh noise,
            the more so the smaller n (see the module docstring; thousands, not hundreds).
        process: the process, if ``denoiser`` does not carry one.
        init: the starting grid: a ``GRIDS`` name or an explicit grid of
            ``steps + 1`` times; the result keeps its two ends.
        reference: the exact (or fine) endpoints for ``x_pilot``, same shape;
            computed with rk45 when None.
        max_evals: the budget of objective evaluations (sampler runs on the
            pilot batch); default 60 * (steps - 1) + 100, at least 200.
        rho: the exponent of the coordinate u = sigma~^(1/rho) (Karras et al.'s rho).
        reference_rtol: rtol = atol of the rk45 reference when it is computed here.
        return_info: also return a dict with the pilot MSE of the initial and
            fitted grids, the number of evaluations and the reference.
        **sampler_options: passed to the sampler (e.g. ``order=3, final_order=2``).

    Returns:
        A float64 CPU tensor of ``steps + 1`` strictly decreasing times, for
        ``udm.sample(denoiser, sampler, times=grid, **sampler_options)``;
        with ``return_info`` the pair ``(grid, info)``.
    """
    from scipy.optimize import minimize

    SAMPLERS.get(sampler)  # unknown names fail here, with the list of valid ones
    if sampler in _ADAPTIVE:
        raise ValueError(f"sampler {sampler!r} is adaptive: the grid does not set its steps, so there is nothing to fit")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an integer >= 2 (a grid with interior points), got {steps!r}")
    process = process_of(denoiser, process)
    if not isinstance(x_pilot, torch.Tensor) or x_pilot.ndim < 2 or x_pilot.shape[0] < 1:
        shape = tuple(x_pilot.shape) if isinstance(x_pilot, torch.Tensor) else type(x_pilot).__name__
        raise ValueError(f"x_pilot must be a batch of starting noises, a tensor of shape (n, ...) with n >= 1; got {shape}")
    if not bool(torch.isfinite(x_pilot).all()):
        raise ValueError("x_pilot contains NaN or inf")
    if rho <= 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    if isinstance(init, str):
        grid0 = get_grid(init, process, steps)
    else:
        grid0 = process.check_times(torch.as_tensor(init, dtype=torch.float64).cpu())
        if len(grid0) != steps + 1:
            raise ValueError(f"the init grid has {len(grid0) - 1} steps but steps={steps}")
    x_pilot = x_pilot.to(torch.float64)
    t0, t1 = float(grid0[0]), float(grid0[-1])
    if reference is None:
        reference = _reference(denoiser, process, x_pilot, t0, t1, reference_rtol)
    elif not isinstance(reference, torch.Tensor) or reference.shape != x_pilot.shape:
        shape = tuple(reference.shape) if isinstance(reference, torch.Tensor) else type(reference).__name__
        raise ValueError(f"reference must have the shape of x_pilot {tuple(x_pilot.shape)}, got {shape}")
    reference = reference.to(torch.float64)

    def run(grid: Tensor) -> Tensor:
        return sample(denoiser, sampler, times=grid, x_T=x_pilot, process=process, dtype=torch.float64, **sampler_options)

    # errors in the options, the denoiser or the init grid surface here, unmasked
    out = run(grid0)
    if not torch.equal(out, run(grid0)):
        raise ValueError(f"sampler {sampler!r} with these options is stochastic; only deterministic samplers have a grid to fit")
    mse0 = float((out - reference).pow(2).mean())
    if not math.isfinite(mse0):
        raise ValueError("the sampler's output on the init grid is not finite")

    level, time_of = _level(process, rho, t0)
    u0, u1 = level(t0), level(t1)
    if not (math.isfinite(u0) and math.isfinite(u1) and u0 > u1):
        raise ValueError(f"the grid coordinate is not finite and decreasing between t={t0:g} and t={t1:g}")
    span = u0 - u1
    incs = -np.diff(np.array([level(float(t)) for t in grid0]))
    if not (incs > 0).all():
        raise ValueError("the init grid must be strictly decreasing in sigma~")
    z0 = np.log(incs[1:] / incs[0])

    def grid_of(z: np.ndarray) -> Tensor | None:
        w = np.exp(np.concatenate([[0.0], np.clip(z, -30.0, 30.0)]))
        u = u0 - span * np.cumsum(w / w.sum())
        times = [t0] + [time_of(float(v)) for v in u[:-1]] + [t1]
        g = torch.tensor(times, dtype=torch.float64)
        return g if bool(torch.isfinite(g).all()) and bool((g[1:] < g[:-1]).all()) else None

    evals = 0
    best: dict[str, Any] = {"mse": mse0, "grid": grid0.clone()}

    def objective(z: np.ndarray) -> float:
        nonlocal evals
        evals += 1
        g = grid_of(z)
        if g is None:
            return math.inf
        try:
            err = float((run(g) - reference).pow(2).mean())
        except FloatingPointError:  # the denoiser returned NaN or inf on this grid
            return math.inf
        if not math.isfinite(err):
            return math.inf
        if err < best["mse"]:
            best["mse"], best["grid"] = err, g
        return err

    budget = max(200, 60 * (steps - 1) + 100) if max_evals is None else int(max_evals)
    if budget < 1:
        raise ValueError(f"max_evals must be >= 1, got {max_evals}")
    z = z0
    for scale in (0.5, 0.15):  # a broad search, then one restart from the best point with a smaller simplex
        left = budget - evals
        if left <= len(z0):
            break
        simplex = np.vstack([z, z + scale * np.eye(len(z))]) if len(z) else None
        res = minimize(
            objective,
            z,
            method="Nelder-Mead",
            options={"maxfev": left, "initial_simplex": simplex, "xatol": 1e-4, "fatol": 1e-14 * max(mse0, 1e-300)},
        )
        z = res.x
    grid = process.check_times(best["grid"])
    if return_info:
        return grid, {"mse_init": mse0, "mse": best["mse"], "evals": evals, "reference": reference}
    return grid
