"""Time grids: ``steps + 1`` strictly decreasing times from the prior end to the clean end.

Every grid starts at ``t_start`` (default ``process.t_max``) and ends at the
clean-data time ``process.t_min``. Grids that space points by noise level
(``karras``, ``logsnr``) place ``steps`` points between ``t_start`` and
``t_end`` (default ``process.t_eps``) and then add the final step to clean
data, as k-diffusion and EDM append sigma = 0. The registry ``GRIDS`` names
them; an explicit grid is any decreasing tensor passed as ``times=``. Noise
levels are those of :mod:`udm.samplers.coordinates`, which also says where
they are finite.

``leading``, ``trailing`` and ``linspace`` are diffusers' ``timestep_spacing``
(as in its DDIM and DDPM schedulers; Lin et al. 2024, Table 2) for a process on
the integer times 0..N (discrete DDPM, whose time t is diffusers' timestep + 1):
they pick ``steps`` of the integer times 1..N, then the clean end.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..processes.base import LinearPath, Process, require
from ..registry import Registry
from .coordinates import finite_level, karras_level

Tensor = torch.Tensor
Grid = Callable[..., Tensor]
GRIDS: Registry[Grid] = Registry("grid")


def _ends(process: Process, t_start: float | None, t_end: float | None) -> tuple[float, float]:
    t0 = process.t_max if t_start is None else float(t_start)
    t1 = process.t_eps if t_end is None else float(t_end)
    if not process.t_min < t1 < t0 <= process.t_max:
        raise ValueError(
            f"grid ends must satisfy t_min < t_end < t_start <= t_max for process {process.name!r}: "
            f"got t_start={t0:g}, t_end={t1:g}, domain [{process.t_min:g}, {process.t_max:g}]"
        )
    return t0, t1


def _with_clean_end(process: Process, times: Tensor) -> Tensor:
    return torch.cat([times, torch.tensor([process.t_min], dtype=torch.float64)])


@GRIDS.register("uniform")
def uniform(process: Process, steps: int, *, t_start: float | None = None) -> Tensor:
    """Uniform in t from ``t_start`` to the clean end (DDIM's and diffusers' "trailing" spacing)."""
    t0 = process.t_max if t_start is None else float(t_start)
    return torch.linspace(t0, process.t_min, steps + 1, dtype=torch.float64)


@GRIDS.register("quadratic")
def quadratic(process: Process, steps: int, *, t_start: float | None = None) -> Tensor:
    """t_i = t_min + (t_start - t_min) (i / steps)^2 in reverse: denser near the data (DDIM's "quad")."""
    t0 = process.t_max if t_start is None else float(t_start)
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return process.t_min + (t0 - process.t_min) * u * u


def _level_grid(
    process: LinearPath,
    steps: int,
    t_start: float | None,
    t_end: float | None,
    level: Callable[[Tensor], Tensor],
    time_of_level: Callable[[Tensor], Tensor],
    name: str,
) -> Tensor:
    """``steps`` times uniform in a monotone ``level`` of t between t_start and t_end, then the clean end."""
    t0, t1 = _ends(process, t_start, t_end)
    if not finite_level(process, t0):
        raise ValueError(f"the {name} grid is undefined at t_start={t0:g} (alpha = 0 there); pass t_start < t_max")
    l0, l1 = level(torch.tensor(t0, dtype=torch.float64)), level(torch.tensor(t1, dtype=torch.float64))
    if steps == 1:
        return torch.tensor([t0, process.t_min], dtype=torch.float64)
    times = time_of_level(torch.linspace(float(l0), float(l1), steps, dtype=torch.float64))
    times[0], times[-1] = t0, t1
    return _with_clean_end(process, times)


@GRIDS.register("karras")
def karras(
    process: Process, steps: int, *, rho: float = 7.0, t_start: float | None = None, t_end: float | None = None
) -> Tensor:
    """Karras et al. (2022, eq. 5): sigma~ uniform in sigma~^(1/rho) from t_start to t_end, then clean.

    sigma~ = sigma/alpha is the noise level of x/alpha, so the grid means the
    same thing for VP, VE and EDM processes.
    """
    p = require(process, LinearPath, "the 'karras' grid (it spaces times by noise level)")
    return _level_grid(p, steps, t_start, t_end, *karras_level(p, rho), "karras")


@GRIDS.register("logsnr")
def logsnr(process: Process, steps: int, *, t_start: float | None = None, t_end: float | None = None) -> Tensor:
    """Uniform in log-SNR from t_start to t_end, then clean (DPM-Solver's "logSNR" spacing)."""
    p = require(process, LinearPath, "the 'logsnr' grid (it spaces times by noise level)")
    return _level_grid(p, steps, t_start, t_end, p.log_snr, p.t_from_log_snr, "logsnr")


def _integer_steps(process: Process, name: str, steps: int) -> int:
    """N for a process on the integer times 0..N with N >= steps; the diffusers spacings are defined only there."""
    n = float(process.t_max)
    if process.t_min != 0 or n != round(n) or not 1 <= steps <= n:
        raise ValueError(
            f"the {name!r} grid picks {steps} of the integer times 1..N of a discrete-time process (diffusers' "
            f"timestep_spacing), but process {process.name!r} has t in [{process.t_min:g}, {n:g}]: use 'uniform', "
            "'karras' or 'logsnr'"
        )
    return int(n)


def _from_timesteps(process: Process, timesteps: np.ndarray) -> Tensor:
    """udm times t = k + 1 for diffusers' (decreasing) integer timesteps k, then the clean end."""
    return _with_clean_end(process, torch.from_numpy(np.asarray(timesteps, dtype=np.float64) + 1.0))


@GRIDS.register("leading")
def leading(process: Process, steps: int, *, offset: int = 0) -> Tensor:
    """t = 1 + offset + j (N // steps) for j = steps - 1..0, then clean: DDIM's uniform skip (diffusers' "leading").

    ``offset`` is diffusers' ``steps_offset`` (1 in Stable Diffusion's configs). The
    first time is below N unless steps divides N and offset = N // steps - 1.
    """
    n = _integer_steps(process, "leading", steps)
    return _from_timesteps(process, (np.arange(0, steps) * (n // steps)).round()[::-1] + offset)


@GRIDS.register("trailing")
def trailing(process: Process, steps: int) -> Tensor:
    """t = round(N - j N / steps) for j = 0..steps - 1, then clean: starts at t = N (diffusers' "trailing").

    With steps dividing N this is the ``uniform`` grid; otherwise its times are rounded to integers.
    """
    n = _integer_steps(process, "trailing", steps)
    return _from_timesteps(process, np.round(np.arange(n, 0, -n / steps)) - 1.0)


@GRIDS.register("linspace")
def linspace(process: Process, steps: int) -> Tensor:
    """t = 1 + round(k) for k = linspace(0, N - 1, steps) in reverse, then clean (diffusers' DDIM/DDPM "linspace")."""
    n = _integer_steps(process, "linspace", steps)
    return _from_timesteps(process, np.linspace(0, n - 1, steps).round()[::-1])


def get_grid(name: str, process: Process, steps: int, **options) -> Tensor:
    """The grid ``name`` with ``steps`` steps for ``process`` (validated)."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return process.check_times(GRIDS.get(name)(process, steps, **options))
