"""The sampler registry ``SAMPLERS`` and the one entry point :func:`sample`.

Each sampler is ``fn(denoiser, process, x_T, times, **options) -> x_0`` with
no state between calls and no I/O. :func:`sample` builds the grid and the
start, binds the condition, counts and checks the denoiser's evaluations and
checks the options against the sampler's signature. A per-step projection
(``project=``, conditioning on observed data: :mod:`udm.conditioning`) reaches
the sampler with the run's generator bound.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch

from .. import rng
from ..errors import ConfigError
from ..kernels import refuse_sigma_tilde
from ..processes.base import Process
from ..registry import Registry
from .ancestral import ddim, ddpm, udm, udm_baseline, udm_deterministic
from .discrete import mask_confidence
from .exponential import dpmpp_2m, dpmpp_3m, unipc
from .grids import get_grid
from .ode import check_churn, euler, heun, rk45
from .sde import euler_maruyama, pc
from .stochastic import check_options, dpmpp_2m_sde, dpmpp_3m_sde, dpmpp_sde, sa_solver

Tensor = torch.Tensor
SAMPLERS: Registry[Callable[..., Tensor]] = Registry("sampler")
for _fn in (
    ddpm, ddim, udm, udm_baseline, udm_deterministic, euler, heun, rk45, dpmpp_2m, dpmpp_3m, unipc, euler_maruyama, pc,
    dpmpp_2m_sde, dpmpp_3m_sde, dpmpp_sde, sa_solver, mask_confidence
):
    SAMPLERS.register(_fn.__name__, _fn)


#: Value checks of a sampler's options, run by :func:`check_sampler_options` (so a config is refused before training).
OPTION_CHECKS: dict[str, Callable[..., None]] = {
    **dict.fromkeys(("dpmpp_2m_sde", "dpmpp_3m_sde", "dpmpp_sde", "sa_solver"), check_options),
    **dict.fromkeys(("euler", "heun"), check_churn),
}

#: Keyword arguments a sampler receives from :func:`sample` itself, never as user options.
_PLUMBING = ("callback", "generator", "project")


class Projection(Protocol):
    """A per-step projection: the state x_t after a step to time t, mapped with the run's generator (:mod:`udm.conditioning`).

    ``x0_hat`` is the clean estimate the step was made with (None for the start
    and where a sampler has none of the state's shape).
    """

    def __call__(
        self, x: Tensor, t: float, *, generator: rng.GeneratorLike = None, x0_hat: Tensor | None = None
    ) -> Tensor: ...


def process_of(denoiser: Callable[..., Tensor], process: Process | None) -> Process:
    """``process`` if given, else the one a :class:`~udm.Denoiser` carries."""
    process = process if process is not None else getattr(denoiser, "process", None)
    if process is None:
        raise ValueError("no process: pass a udm.Denoiser or process=")
    return process


def resolve_grid(
    process: Process,
    steps: int | None,
    times: Tensor | Sequence[float] | None,
    grid: str | None = None,
    grid_options: dict | None = None,
) -> Tensor:
    """The time grid of a run: the explicit ``times`` (validated), or ``steps`` steps of ``grid`` (default the process's)."""
    if times is not None:
        grid_times = process.check_times(torch.as_tensor(times, dtype=torch.float64).cpu())
        if steps is not None and steps != len(grid_times) - 1:
            raise ValueError(f"steps={steps} disagrees with the explicit grid of {len(grid_times) - 1} steps; give one of them")
        return grid_times
    if steps is None:
        raise ValueError("give steps (the number of sampler steps, >= 1) or an explicit times grid")
    return get_grid(grid or process.default_grid_name, process, steps, **(grid_options or {}))


def resolve_generator(
    seeds: Sequence[int] | None, generator: rng.GeneratorLike
) -> torch.Generator | list[torch.Generator] | None:
    """The run's generator: one per seed (``seeds``), or ``generator`` normalized."""
    if seeds is not None:
        if generator is not None:
            raise ValueError("give seeds or generator, not both")
        generator = rng.generators_from_seeds(seeds)
    return rng.as_generator(generator)


class _Tracked:
    """The denoiser as samplers see it: condition bound, evaluations counted, output checked.

    It is evaluated at ``process.state_time(x, t)``: the grid time t, except where
    a projection left a state that shows another time (``Process.state_time``).
    """

    def __init__(
        self, denoiser: Callable[..., Tensor], process: Process, cond: Any, times: Tensor, check_finite: bool
    ) -> None:
        self.denoiser, self.process, self.cond, self.times, self.check_finite = denoiser, process, cond, times, check_finite
        self.nfe = 0

    def __call__(self, x: Tensor, t: float) -> Tensor:
        seen_at = self.process.state_time(x, t)
        out = self.denoiser(x, seen_at) if self.cond is None else self.denoiser(x, seen_at, self.cond)
        self.nfe += 1
        expected = self.process.output_shape(x.shape)
        if out.shape not in (x.shape, expected):
            raise ValueError(
                f"denoiser output has shape {tuple(out.shape)} but x_t has shape {tuple(x.shape)}; "
                f"process {self.process.name!r} expects {tuple(expected)}"
            )
        if self.check_finite and out.is_floating_point() and not bool(torch.isfinite(out).all()):
            step = int(torch.argmin((self.times - float(t)).abs()))
            raise FloatingPointError(
                f"the denoiser returned NaN or inf at step {step} of {len(self.times) - 1} (t={float(t):g}, "
                f"evaluation {self.nfe}); check the network, its dtype and the time grid"
            )
        return out


def sample(
    denoiser: Callable[..., Tensor],
    sampler: str = "dpmpp_2m",
    steps: int | None = None,
    x_T: Tensor | None = None,
    times: Tensor | Sequence[float] | None = None,
    *,
    process: Process | None = None,
    grid: str | None = None,
    grid_options: dict | None = None,
    shape: Sequence[int] | None = None,
    seeds: Sequence[int] | None = None,
    generator: rng.GeneratorLike = None,
    cond: Any = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    project: Projection | None = None,
    check_finite: bool = True,
    return_info: bool = False,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    **options: Any,
) -> Tensor | tuple[Tensor, dict[str, Any]]:
    """Draw samples: ``udm.sample(denoiser, sampler="dpmpp_2m", steps=10, x_T=...)``.

    * ``denoiser``: a :class:`~udm.Denoiser` (or any ``(x, t[, cond]) -> x0_hat`` with ``process=``).
    * ``steps`` and ``grid`` (a ``GRIDS`` name, default the process's) build the
      time grid; or pass ``times`` explicitly (strictly decreasing, inside the domain).
    * ``x_T``: the start; if None it is drawn from the prior for data of batch shape ``shape``.
    * ``seeds``: one seed per sample; sample i's x_T and noise come from its own
      generator, so it does not change with batch size or device.
    * ``project``: applied to the start x_T at the grid's first time and to the
      state after every step, with this run's generator (:mod:`udm.conditioning`:
      inpainting by replacement). The start is projected too because the
      observed part is known there as at every other time: a mask-process start
      shows the observed tokens to the first denoiser call.
    * ``options`` go to the sampler (e.g. ``eta`` for ddim, ``churn`` for heun).

    Returns x_0, or ``(x_0, info)`` with ``info = {"nfe", "times"}`` when ``return_info``.
    """
    fn = SAMPLERS.get(sampler)
    process = process_of(denoiser, process)
    grid_times = resolve_grid(process, steps, times, grid, grid_options)
    gen = resolve_generator(seeds, generator)
    if x_T is None:
        if shape is None:
            raise ValueError("give x_T, or shape (the full batch shape) to draw it from the prior")
        shape = tuple(shape)
        if seeds is not None and shape[0] != len(seeds):
            raise ValueError(f"got {len(seeds)} seeds for a batch of {shape[0]}; give one seed per sample")
        x_T = process.prior(process.state_shape(shape), gen, dtype=dtype, device=device)
    tracked = _Tracked(denoiser, process, cond, grid_times, check_finite)
    kwargs = _sampler_options(sampler, fn, gen, options)
    if project is not None:
        kwargs["project"] = _projection(sampler, fn, project, gen)
        x_T = kwargs["project"](x_T, float(grid_times[0]))
    x0 = fn(tracked, process, x_T, grid_times, callback=callback, **kwargs)
    return (x0, {"nfe": tracked.nfe, "times": grid_times}) if return_info else x0


def check_sampler_options(name: str, options: Mapping[str, Any]) -> None:
    """Refuse an option sampler ``name`` does not take (one rule for ``udm.sample`` and the config)."""
    fn = SAMPLERS.get(name)
    refuse_sigma_tilde(options, f"sampler {name!r}")
    params = inspect.signature(fn).parameters
    valid = sorted(k for k, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY and k not in _PLUMBING)
    if "project" in options:
        raise ValueError(f"sampler {name!r}: a projection is not an option; pass project= to udm.sample")
    unknown = sorted(set(options) - set(valid))
    if unknown and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        raise ValueError(f"sampler {name!r} has no option {unknown[0]!r}; its options: {', '.join(valid) or 'none'}")
    if name in OPTION_CHECKS:
        OPTION_CHECKS[name](name, **options)


def _sampler_options(name: str, fn: Callable[..., Tensor], gen: Any, options: dict) -> dict:
    """Check ``options``; pass the generator to samplers that draw noise."""
    check_sampler_options(name, options)
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return {**options, "generator": gen} if "generator" in params or takes_any else options


def _projection(name: str, fn: Callable[..., Tensor], project: Projection, gen: Any) -> Callable[..., Tensor]:
    """``project`` with the run's generator bound, for a sampler that applies projections (a ``project`` parameter)."""
    params = inspect.signature(fn).parameters
    if "project" not in params and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        raise ConfigError(f"sampler {name!r} takes no per-step projection (it has no 'project' parameter); use one that does")
    return functools.partial(project, generator=gen)
