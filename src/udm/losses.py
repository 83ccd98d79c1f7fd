"""Time samplers and the base of every training loss (THEORY §3.2 U1: the objective averages over t).

A training loss draws a time t from a *time sampler*, noise eps ~ q and
x_t = F_t(x0, eps), and scores the model at (x_t, t). The time samplers in
``TIME_SAMPLERS`` return a time and an importance weight; with
``importance=True`` the weight makes the objective an unbiased estimate of the
*uniform-in-t* objective, whatever density the times are drawn from.
:class:`Loss` holds what every loss shares (the time sampler, drawing
(t, w, eps), its checkpointed state); the losses themselves live with their
objectives in :mod:`udm.objectives`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .processes.base import LinearPath, Process, require
from .registry import Registry

Tensor = torch.Tensor

def _uniform01(n: int, generator: torch.Generator | None, device: torch.device | str | None) -> Tensor:
    dev = generator.device if generator is not None else device
    return torch.rand(n, generator=generator, dtype=torch.float64, device=dev)


class TimeSampler:
    """Draws training times t in [t_eps, t_max] with their density, for importance weighting."""

    name = "time_sampler"
    #: True when :meth:`observe` changes the sampler (the trainer then gathers every rank's losses).
    learns = False

    def __init__(self, importance: bool = False) -> None:
        self.importance = bool(importance)

    def draw(self, process: Process, n: int, generator: torch.Generator | None, device) -> Tensor:
        """``n`` times, float64."""
        raise NotImplementedError

    def log_density(self, process: Process, t: Tensor) -> Tensor:
        """log of the density the times are drawn from (w.r.t. dt)."""
        raise NotImplementedError

    def __call__(
        self, process: Process, n: int, generator: torch.Generator | None = None, device=None
    ) -> tuple[Tensor, Tensor]:
        """(t, w): times and per-sample weights (ones unless ``importance``)."""
        t = self.draw(process, n, generator, device)
        if not self.importance:
            return t, torch.ones_like(t)
        log_uniform = -math.log(process.t_max - process.t_eps)
        return t, torch.exp(log_uniform - self.log_density(process, t))

    def observe(self, process: Process, t: Tensor, losses: Tensor) -> None:
        """Feed back per-sample objective values at times ``t`` (adaptive samplers learn from them)."""

    def state_dict(self) -> dict[str, Tensor]:
        """Tensors to checkpoint for exact resume (none for stateless samplers)."""
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore :meth:`state_dict`."""

    def config(self) -> dict:
        return {"name": self.name, "importance": self.importance}


class UniformTime(TimeSampler):
    """t ~ U[t_eps, t_max]; integers with ``discrete=True`` (DDPM's t = 1..N, THEORY §4.1) or an integer-time process."""

    name = "uniform"

    def __init__(self, discrete: bool = False, importance: bool = False) -> None:
        super().__init__(importance)
        self.discrete = bool(discrete)

    def draw(self, process: Process, n: int, generator, device) -> Tensor:
        lo, hi = process.t_eps, process.t_max
        u = _uniform01(n, generator, device)
        if self.discrete or process.integer_times:
            k_lo, k_hi = math.ceil(lo), math.floor(hi)
            if k_hi < k_lo:
                raise ValueError(f"discrete time sampling needs an integer in [{lo:g}, {hi:g}], found none")
            return torch.floor(u * (k_hi - k_lo + 1)).clamp(max=k_hi - k_lo) + k_lo
        return lo + (hi - lo) * u

    def log_density(self, process: Process, t: Tensor) -> Tensor:
        return torch.full_like(t, -math.log(process.t_max - process.t_eps))

    def config(self) -> dict:
        return {**super().config(), "discrete": self.discrete}


class LogNormalTime(TimeSampler):
    """log sigma~ ~ N(p_mean, p_std^2), sigma~ = sigma/alpha (EDM training, Karras et al. 2022 §5).

    The time is t(sigma~), clamped to [t_eps, t_max]; for VP processes this is
    the same noise-level law as EDM's, read in the process's own clock.
    """

    name = "lognormal"

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2, importance: bool = False) -> None:
        super().__init__(importance)
        if p_std <= 0:
            raise ValueError(f"lognormal time sampler: p_std must be > 0, got {p_std}")
        self.p_mean, self.p_std = float(p_mean), float(p_std)

    def draw(self, process: Process, n: int, generator, device) -> Tensor:
        p = require(process, LinearPath, "the lognormal time sampler")
        dev = generator.device if generator is not None else device
        z = torch.randn(n, generator=generator, dtype=torch.float64, device=dev)
        t = p.t_from_sigma_tilde(torch.exp(self.p_mean + self.p_std * z))
        return t.clamp(process.t_eps, process.t_max)

    def log_density(self, process: Process, t: Tensor) -> Tensor:
        p = require(process, LinearPath, "the lognormal time sampler")
        z = (torch.log(p.sigma_tilde(t)) - self.p_mean) / self.p_std
        jac = 0.5 * p.dlog_snr(t).abs()
        return -0.5 * z**2 - math.log(self.p_std * math.sqrt(2 * math.pi)) + torch.log(jac)

    def config(self) -> dict:
        return {**super().config(), "p_mean": self.p_mean, "p_std": self.p_std}


class LogSNRTime(TimeSampler):
    """log-SNR uniform on [lambda(t_max), lambda(t_eps)] (Kingma et al. 2021, "VDM"), or a given range."""

    name = "logsnr"

    def __init__(self, min_log_snr: float | None = None, max_log_snr: float | None = None, importance: bool = False) -> None:
        super().__init__(importance)
        self.min_log_snr, self.max_log_snr = min_log_snr, max_log_snr

    def _range(self, process: Process) -> tuple[float, float]:
        p = require(process, LinearPath, "the logsnr time sampler")
        lo = float(p.log_snr(process.t_max)) if self.min_log_snr is None else float(self.min_log_snr)
        hi = float(p.log_snr(process.t_eps)) if self.max_log_snr is None else float(self.max_log_snr)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(
                f"logsnr time sampler: the log-SNR range [{lo:g}, {hi:g}] of process {process.name!r} is not finite; "
                "pass min_log_snr and max_log_snr"
            )
        if not hi > lo:
            raise ValueError(f"logsnr time sampler: empty log-SNR range [{lo:g}, {hi:g}]")
        return lo, hi

    def draw(self, process: Process, n: int, generator, device) -> Tensor:
        lo, hi = self._range(process)
        lam = lo + (hi - lo) * _uniform01(n, generator, device)
        return process.t_from_log_snr(lam).clamp(process.t_eps, process.t_max)

    def log_density(self, process: Process, t: Tensor) -> Tensor:
        lo, hi = self._range(process)
        p = require(process, LinearPath, "the logsnr time sampler")
        return torch.log(p.dlog_snr(t).abs()) - math.log(hi - lo)

    def config(self) -> dict:
        return {**super().config(), "min_log_snr": self.min_log_snr, "max_log_snr": self.max_log_snr}


class LogUniformTime(TimeSampler):
    """log t ~ U[log t_eps, log t_max]: density 1 / (t log(t_max / t_eps)), for any process with t_eps > 0.

    With ``importance=True`` the weight t log(t_max / t_eps) cancels a 1/t
    factor in the objective, e.g. the absorbing process's ELBO weight m'(t)/m(t)
    = 1/t for m(t) = t (THEORY §4.4): the ELBO is estimated without bias and
    without the heavy tail that uniform t gives it near t = 0.
    """

    name = "loguniform"

    def _range(self, process: Process) -> tuple[float, float]:
        lo, hi = float(process.t_eps), float(process.t_max)
        if not 0.0 < lo < hi:
            raise ValueError(f"the loguniform time sampler needs 0 < t_eps < t_max, got [{lo:g}, {hi:g}] for {process.name!r}")
        return math.log(lo), math.log(hi)

    def draw(self, process: Process, n: int, generator, device) -> Tensor:
        lo, hi = self._range(process)
        return torch.exp(lo + (hi - lo) * _uniform01(n, generator, device)).clamp(process.t_eps, process.t_max)

    def log_density(self, process: Process, t: Tensor) -> Tensor:
        lo, hi = self._range(process)
        return -torch.log(t) - math.log(hi - lo)


class AdaptiveTime(TimeSampler):
    """Loss-aware importance sampling (Nichol & Dhariwal 2021, §3.3), always importance-weighted.

    [t_eps, t_max] is cut into ``bins`` equal cells; each keeps its last
    ``history`` per-sample losses. Once every cell is full, a cell is drawn with
    probability p_k proportional to sqrt(E[L^2]) (mixed with ``uniform_mix`` of
    the uniform law), t uniform inside it, and the weight 1 / (K p_k) keeps the
    objective an unbiased estimate of the uniform-in-t one while cutting its
    variance. Until then it samples uniformly.
    """

    name = "adaptive"
    learns = True

    def __init__(self, bins: int = 64, history: int = 10, uniform_mix: float = 0.001) -> None:
        super().__init__(importance=True)
        if bins < 1 or history < 1 or not 0.0 < uniform_mix <= 1.0:
            raise ValueError("adaptive time sampler: need bins >= 1, history >= 1 and 0 < uniform_mix <= 1")
        self.bins, self.history, self.uniform_mix = int(bins), int(history), float(uniform_mix)
        self.losses = torch.zeros(self.bins, self.history, dtype=torch.float64)
        self.counts = torch.zeros(self.bins, dtype=torch.int64)

    def probabilities(self) -> Tensor:
        """p_k over the cells (uniform until every cell has ``history`` losses)."""
        if int(self.counts.min()) < self.history:
            return torch.full((self.bins,), 1.0 / self.bins, dtype=torch.float64)
        p = torch.sqrt((self.losses**2).mean(1))
        p = p / p.sum()
        return (1.0 - self.uniform_mix) * p + self.uniform_mix / self.bins

    def _cell(self, process: Process, t: Tensor) -> Tensor:
        u = (t - process.t_eps) / (process.t_max - process.t_eps)
        return (u * self.bins).long().clamp(0, self.bins - 1)

    def draw(self, process: Process, n: int, generator, device) -> Tensor:
        dev = generator.device if generator is not None else device
        p = self.probabilities().to(dev)
        k = torch.multinomial(p, n, replacement=True, generator=generator)
        u = (k.to(torch.float64) + _uniform01(n, generator, device)) / self.bins
        return process.t_eps + (process.t_max - process.t_eps) * u

    def __call__(self, process: Process, n: int, generator=None, device=None) -> tuple[Tensor, Tensor]:
        t = self.draw(process, n, generator, device)
        p = self.probabilities().to(t.device)
        return t, 1.0 / (self.bins * p[self._cell(process, t)])

    def log_density(self, process: Process, t: Tensor) -> Tensor:
        p = self.probabilities().to(t.device)
        return torch.log(p[self._cell(process, t)] * self.bins / (process.t_max - process.t_eps))

    def observe(self, process: Process, t: Tensor, losses: Tensor) -> None:
        """Push per-sample losses into their cells' histories (oldest dropped)."""
        cells = self._cell(process, t.detach().double().cpu())
        for k, loss in zip(cells.tolist(), losses.detach().double().cpu().tolist()):
            self.losses[k] = torch.roll(self.losses[k], -1)
            self.losses[k, -1] = loss
            self.counts[k] = min(int(self.counts[k]) + 1, self.history)

    def state_dict(self) -> dict[str, Tensor]:
        return {"losses": self.losses.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.losses.copy_(state["losses"])
        self.counts.copy_(state["counts"])

    def config(self) -> dict:
        return {"name": self.name, "bins": self.bins, "history": self.history, "uniform_mix": self.uniform_mix}


TIME_SAMPLERS: Registry[Callable[..., TimeSampler]] = Registry("time sampler")
for _cls in (UniformTime, LogNormalTime, LogSNRTime, LogUniformTime, AdaptiveTime):
    TIME_SAMPLERS.register(_cls.name, _cls)


def get_time_sampler(spec: str | dict | TimeSampler | None) -> TimeSampler:
    """A time sampler from a name, a ``{"name": ..., **options}`` dict, or an instance (None: uniform)."""
    return TIME_SAMPLERS.build(spec, "uniform", TimeSampler)


@dataclass
class LossOutput:
    """The scalar loss to back-propagate and what produced it.

    ``per_sample`` is the weighted value averaged into ``loss``; ``objective``
    the same without the importance weight, which is what an adaptive time
    sampler learns from (pass it to ``time_sampler.observe``).
    """

    loss: Tensor
    per_sample: Tensor
    t: Tensor
    weight: Tensor
    objective: Tensor


class Loss:
    """What every training loss shares: the time sampler, drawing (t, w, eps), and its checkpointed state.

    Calling a loss draws the (t, w, eps) it was not given (distributed training
    draws them for the global batch and passes each rank its slice) and hands
    them to :meth:`at`, the one method a subclass writes.
    """

    def __init__(self, time_sampler: str | dict | TimeSampler | None = None) -> None:
        self.time_sampler = get_time_sampler(time_sampler)

    def draw(
        self, process: Process, x0: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(t, w, eps) for a batch: times and importance weights (float64) and the noise in the state shape.

        The noise takes x0's dtype for floating data and float32 for tokens.
        """
        t, w = self.time_sampler(process, x0.shape[0], generator, x0.device)
        dtype = x0.dtype if x0.is_floating_point() else torch.float32
        eps = process.sample_noise(process.state_shape(x0.shape), generator, dtype=dtype, device=x0.device)
        return t.to(x0.device), w.to(x0.device), eps.to(x0.device)

    def times_and_noise(
        self, process: Process, x0: Tensor, generator: torch.Generator | None, t: Tensor | None, w: Tensor | None, eps: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The given (t, w, eps), drawing what is missing; w defaults to ones when t is given alone."""
        if t is None or eps is None:
            t_drawn, w_drawn, eps_drawn = self.draw(process, x0, generator)
            t, w = (t_drawn, w_drawn) if t is None else (t, w)
            eps = eps_drawn if eps is None else eps
        return t, torch.ones_like(t) if w is None else w, eps

    def __call__(
        self,
        model: Any,
        x0: Tensor,
        cond: Tensor | None = None,
        generator: torch.Generator | None = None,
        *,
        t: Tensor | None = None,
        w: Tensor | None = None,
        eps: Tensor | None = None,
    ) -> LossOutput:
        """The loss on a batch ``x0`` for ``model`` (a denoiser or classifier carrying its process)."""
        t, w, eps = self.times_and_noise(model.process, x0, generator, t, w, eps)
        return self.at(model, x0, cond, t, w, eps)

    def at(self, model: Any, x0: Tensor, cond: Tensor | None, t: Tensor, w: Tensor, eps: Tensor) -> LossOutput:
        """The loss on ``x0`` at times ``t`` with importance weights ``w`` and noise ``eps``."""
        raise NotImplementedError(f"{type(self).__name__} must define at(model, x0, cond, t, w, eps)")

    def state_dict(self) -> dict[str, Tensor]:
        """The time sampler's state (checkpointed for exact resume)."""
        return self.time_sampler.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.time_sampler.load_state_dict(state)
