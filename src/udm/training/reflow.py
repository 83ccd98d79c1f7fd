"""Reflow: straighten a trained rectified flow by retraining it on its own couplings (THEORY §8.1; Liu et al. 2022).

Rectified flow (THEORY §8.1, worked example 1) trains a velocity field v on
the straight lines x_t = (1 - t) x0 + t x1 between *independent* draws
x0 ~ data and x1 ~ p1 (any easy prior). Straight conditional paths do not
make straight marginal paths: where lines of different pairs cross, the
learned field averages them ("for multi-point data the marginal trajectories
are curved"), so the ODE dx/dt = v needs many steps.

Reflow (Liu, Gong and Liu 2022, "Flow Straight and Fast: Learning to Generate
and Transfer Data with Rectified Flow", §2.2) re-pairs the data by the flow
itself: draw x1 ~ p1, solve the ODE from t = 1 down to t = 0 to get
x0 = Z(x1), and train a new field (the "2-rectified flow", usually started
from the 1-rectified weights) on the same straight-line loss with the
*fixed* coupling (x0, x1) instead of independent draws. The new coupling has
no more transport cost than the old one, and its paths cross less, so they
are straighter: 1- or 2-step Euler samples approach the RK45 ones.

The pieces here:

* :func:`reflow_pairs` draws ``(x0, x1)`` with any ODE sampler;
* :func:`reflow_dataset` wraps them as a :class:`~udm.data.Dataset` whose
  ``x`` is x0 and whose paired ``noise`` is x1 / sigma_1 (= x1 for
  rectified flow): the trainer then corrupts row i with its own noise row,
  x_t = (1 - t) x0_i + t x1_i, and still draws t;
* :func:`straightness` is Liu et al.'s measure
  S = E ∫_0^1 ||(x1 - x0) - v(x_t, t)||^2 dt along the model's own Euler
  trajectory (0 exactly when every path is a straight line);
* the ``reflow`` data loader (:func:`reflow`, registered in ``DATASETS``
  from here, above the data layer, because it loads a trained run) builds
  the data set from a trained run, so a config can say
  ``data: {name: reflow, run: runs/moons_rf, pairs: 4096}``.

Reflow needs a process whose ODE starts from pure noise, x_T = sigma_T eps
(alpha_T = 0): the ``rectified_flow`` process, with any noise law.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .. import rng
from ..data.base import DATASETS, KINDS, Dataset
from ..denoiser import from_x0
from ..processes.base import LinearPath, Process, require
from ..samplers import sample
from .experiment import Experiment

Tensor = torch.Tensor


def require_pure_noise_start(process: Process, what: str) -> Process:
    """``process`` if it is linear with alpha(t_max) = 0 (the ODE starts from x_T = sigma_T eps), else a clear error."""
    require(process, LinearPath, what, "use the rectified_flow process")
    alpha_T = float(process.alpha(process.t_max))
    if alpha_T != 0.0:
        raise ValueError(
            f"{what} needs a process whose paths end in pure noise (alpha(t_max) = 0, rectified flow, THEORY §8.1), "
            f"but process {process.name!r} has alpha({process.t_max:g}) = {alpha_T:g}; use the rectified_flow process"
        )
    return process


def _process_of(denoiser: Callable[..., Tensor], process: Process | None) -> Process:
    process = process if process is not None else getattr(denoiser, "process", None)
    if process is None:
        raise ValueError("no process: pass a udm.Denoiser or process=")
    return process


def velocity(denoiser: Callable[..., Tensor], x: Tensor, t: float, process: Process, cond: Any = None) -> Tensor:
    """The model's velocity dx/dt at (x, t): ``denoiser.predict(x, t, "velocity")``, or from x0_hat via ``udm.from_x0``."""
    predict = getattr(denoiser, "predict", None)
    if predict is not None:
        return predict(x, t, "velocity", cond)
    x0_hat = denoiser(x, t) if cond is None else denoiser(x, t, cond)
    return from_x0(x0_hat, x, t, process, "velocity")


@torch.no_grad()
def reflow_pairs(
    denoiser: Callable[..., Tensor],
    n: int,
    *,
    shape: Sequence[int],
    sampler: str = "rk45",
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 1024,
    process: Process | None = None,
    device: torch.device | str | None = None,
    **sample_options: Any,
) -> tuple[Tensor, Tensor]:
    """``(x0, x1)``: ``n`` prior draws x1 and the ODE endpoints x0 the model maps them to (Liu et al. 2022, §2.2).

    ``shape`` is one sample's shape (``(2,)`` for 2-D points, ``(C, H, W)``
    for images). Sample i draws x1 from the process prior with its own
    generator seeded ``seed + i`` (as :func:`udm.evaluate.draw_samples`), so
    x1 does not depend on ``batch_size`` or the device, and each batch's x0
    is exactly ``udm.sample(denoiser, sampler, steps, shape=..., seeds=...)``
    (fixed-grid samplers give the same x0 for any ``batch_size``; ``rk45``
    chooses its steps per batch, so its x0 agrees to the tolerance only).

    ``sampler`` is any deterministic ODE sampler (``rk45``, ``euler``,
    ``heun``, ...); ``steps`` its number of steps. For ``rk45`` ``steps`` may
    be left out: the adaptive solver then integrates the whole span
    ``[t_max, t_eps]`` in one go and finishes with the step into clean data
    (Liu et al. integrate to 1e-3). ``sample_options`` (``rtol``, ``grid``,
    ``times``, ...) go to :func:`udm.sample`. Both tensors are returned on
    the CPU in float32.
    """
    process = require_pure_noise_start(_process_of(denoiser, process), "reflow")
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"reflow_pairs: n must be an integer >= 1, got {n!r}")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"reflow_pairs: batch_size must be an integer >= 1, got {batch_size!r}")
    shape = tuple(int(s) for s in shape)
    if steps is None and "times" not in sample_options:
        if sampler != "rk45":
            raise ValueError(f"reflow_pairs: give steps for sampler {sampler!r} (only rk45 may leave them out)")
        sample_options["times"] = [process.t_max, process.t_eps, process.t_min]
    n, batch_size = int(n), int(batch_size)
    x0s, x1s = [], []
    for lo in range(0, n, batch_size):
        hi = min(n, lo + batch_size)
        gens = rng.generators_from_seeds(range(seed + lo, seed + hi))
        x1 = process.prior(process.state_shape((hi - lo, *shape)), gens, dtype=torch.float32, device=device)
        x0 = sample(denoiser, sampler, steps, x_T=x1, process=process, generator=gens, device=device, **sample_options)
        x0s.append(x0.float().cpu())
        x1s.append(x1.cpu())
    return torch.cat(x0s), torch.cat(x1s)


def reflow_dataset(
    denoiser: Callable[..., Tensor],
    n: int,
    *,
    shape: Sequence[int],
    name: str = "reflow",
    kind: str | None = None,
    process: Process | None = None,
    **pair_options: Any,
) -> Dataset:
    """The reflow training set: ``x`` = x0 (ODE endpoints), ``noise`` = x1 / sigma_1 (their prior draws).

    The trainer uses ``noise[i]`` as the eps of sample i, so it trains on
    x_t = (1 - t) x0_i + t x1_i, the straight line of the fixed coupling
    (THEORY §8.1, algorithm C2 with the coupling of Liu et al. 2022 instead of
    independent draws). ``kind`` defaults to ``"image"`` for ``(C, H, W)``
    samples and ``"points"`` otherwise; images are not clipped, since clipping
    would break the coupling. ``pair_options`` go to :func:`reflow_pairs`.
    """
    process = require_pure_noise_start(_process_of(denoiser, process), "reflow")
    shape = tuple(int(s) for s in shape)
    if kind is None:
        kind = "image" if len(shape) == 3 else "points"
    if kind not in KINDS or kind == "tokens":
        raise ValueError(f"reflow_dataset: kind must be 'points' or 'image' (reflow needs continuous data), got {kind!r}")
    x0, x1 = reflow_pairs(denoiser, n, shape=shape, process=process, **pair_options)
    sigma_T = float(process.sigma(process.t_max))
    return Dataset(x0, None, None, kind, name, noise=x1 / sigma_T)


@torch.no_grad()
def straightness(
    denoiser: Callable[..., Tensor],
    x1: Tensor,
    *,
    steps: int = 100,
    process: Process | None = None,
    cond: Any = None,
) -> float:
    """Liu et al.'s straightness S = E ∫_0^1 ||(x1 - x0) - v(x_t, t)||^2 dt of the model's flow (0: straight paths).

    The trajectory is the model's own Euler solution of dx/dt = v on a
    uniform grid of ``steps`` steps from x1 at t = 1 to x0 at t = 0, with v
    the model's velocity (``denoiser.predict(x, t, "velocity")``, or from
    x0_hat by ``udm.from_x0``); the integral is the same left Riemann sum.
    ||.||^2 is the squared Euclidean norm of a whole sample, and E the mean
    over the rows of ``x1`` (prior draws, e.g. the second element of
    :func:`reflow_pairs`). Because the Euler endpoint satisfies
    x1 - x0 = sum_i h_i v_i, the sum equals sum_i h_i ||v_i||^2 - ||x1 - x0||^2
    exactly, which is what is accumulated (in float64), so no trajectory is
    stored.
    """
    process = require_pure_noise_start(_process_of(denoiser, process), "straightness")
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"straightness: steps must be an integer >= 1, got {steps!r}")
    times = torch.linspace(process.t_max, process.t_min, int(steps) + 1, dtype=torch.float64).tolist()
    span = process.t_max - process.t_min
    x = x1
    energy = torch.zeros(x1.shape[0], dtype=torch.float64, device=x1.device)
    for t, s in zip(times[:-1], times[1:]):
        v = velocity(denoiser, x, t, process, cond)
        energy += (t - s) * v.double().flatten(1).pow(2).sum(1)
        x = x + (s - t) * v
    chord = (x1.double() - x.double()).flatten(1).pow(2).sum(1) / span
    return float((energy - chord).clamp(min=0.0).mean())


@DATASETS.register("reflow")
def reflow(
    run: str | Path,
    pairs: int = 4096,
    sampler: str = "rk45",
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 1024,
    raw_weights: bool = False,
    device: str | None = None,
    options: dict[str, Any] | None = None,
) -> Dataset:
    """The ``reflow`` data set: pairs of the trained run (or checkpoint) ``run``, ``x`` = ODE endpoints x0, ``noise`` = their x1.

    ``data: {name: reflow, run: runs/moons_rf, pairs: 4096, sampler: rk45}``
    loads the run's latest checkpoint (EMA weights unless ``raw_weights``),
    draws ``pairs`` prior samples x1 with seeds ``seed, seed + 1, ...`` and
    solves the model's ODE to get x0 (:func:`reflow_dataset`). ``sampler``,
    ``steps`` and ``options`` (e.g. ``{rtol: 1e-5}``) choose the ODE solver
    (``steps`` may be left out for ``rk45``); ``batch_size`` how many pairs
    are solved at once; ``device`` where (default CPU). The pairs are a pure
    function of the checkpoint and these options, so rebuilding the config
    (resume, ``udm eval``) redraws the same pairs, as long as the run has no
    newer checkpoint. The data set is named ``reflow(<run folder>)``; its kind
    (points or image) follows the run's data shape.
    """
    if options is not None and not isinstance(options, dict):
        raise ValueError(f"reflow: options must be a mapping of sampler options, got {type(options).__name__}")
    exp = Experiment.from_run(str(run), use_ema=not raw_weights, device=device)
    if exp.conditional:
        raise ValueError(f"reflow: the model in {exp.checkpoint.path} is class-conditional; reflow supports unconditional models only")
    return reflow_dataset(
        exp.model(), pairs, shape=exp.shape, name=f"reflow({exp.checkpoint.run_dir.name})", sampler=sampler, steps=steps, seed=seed,
        batch_size=batch_size, device=device, **(options or {}),
    )
