"""Training objectives for any parameterization, driven by the process (THEORY §3.2 U1, §4.1).

One denoising loss covers every Gaussian-family model. Draw t from a time
sampler, eps ~ q, x_t = F_t(x0, eps); the network outputs its
parameterization's target a(t) x_t + b(t) x0 (see :mod:`udm.denoiser`), so

    ||pred - target||^2 = b(t)^2 ||x0_hat - x0||^2.

Every weighting in the literature is therefore an x0-space weight lambda(t):

* ``weighting="target"`` (default): plain MSE in the network's own
  parameterization, lambda = b_pred^2. With ``prediction="edm"`` this *is*
  EDM's lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2
  (Karras et al. 2022, eq. 8), because b_edm = 1 / c_out;
* a parameterization name (``"eps"``, ``"x0"``, ``"v"``, ``"velocity"``,
  ``"score"``, ``"edm"``): MSE as if the network predicted that quantity,
  lambda = b_kind^2 (``"eps"`` is the DDPM "simple" loss, lambda = SNR);
* ``"min_snr"``: min(SNR, gamma) (Hang et al. 2023);
* ``"likelihood"``: g(t)^2 times score matching, lambda = g^2 alpha^2 / sigma^4,
  the weighting for which the loss bounds the NLL (Song et al. 2021).

The loss is evaluated as (lambda / b_pred^2) ||pred - target||^2, so it never
divides by a vanishing b. The time samplers in ``TIME_SAMPLERS`` return a
time and an importance weight; with ``importance=True`` the weight makes the
objective an unbiased estimate of the *uniform-in-t* objective, whatever
density the times are drawn from (THEORY §3.2: U1 averages over t).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .denoiser import Denoiser, from_x0, get_parameterization
from .processes.base import Process
from .processes.gaussian import require_gaussian, require_linear
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
        p = require_linear(process, "the lognormal time sampler")
        dev = generator.device if generator is not None else device
        z = torch.randn(n, generator=generator, dtype=torch.float64, device=dev)
        t = p.t_from_sigma_tilde(torch.exp(self.p_mean + self.p_std * z))
        return t.clamp(process.t_eps, process.t_max)

    def log_density(self, process: Process, t: Tensor) -> Tensor:
        p = require_linear(process, "the lognormal time sampler")
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
        p = require_linear(process, "the logsnr time sampler")
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
        p = require_linear(process, "the logsnr time sampler")
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
    if isinstance(spec, TimeSampler):
        return spec
    if spec is None:
        return UniformTime()
    if isinstance(spec, str):
        return TIME_SAMPLERS.get(spec)()
    opts = dict(spec)
    return TIME_SAMPLERS.get(opts.pop("name", "uniform"))(**opts)


def _x0_weight(process: Process, t: Tensor, weighting: str, gamma: float) -> Tensor:
    """lambda(t): the weight on ||x0_hat - x0||^2 that ``weighting`` means (module docstring)."""
    if weighting == "min_snr":
        return torch.clamp(torch.exp(require_linear(process, "min_snr weighting").log_snr(t)), max=gamma)
    if weighting == "likelihood":
        p = require_gaussian(process, "likelihood weighting")
        _, g2 = p.sde(t)
        return g2 * p.alpha(t) ** 2 / p.sigma(t) ** 4
    _, b = get_parameterization(weighting).coefficients(process, t)
    return b**2


WEIGHTINGS = ("target", "x0", "eps", "score", "v", "velocity", "edm", "min_snr", "likelihood")


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


NORMS = ("l2", "l1")


class Objective:
    """What every training objective shares: the time sampler, drawing (t, w, eps), and its checkpointed state.

    Subclasses implement ``__call__(denoiser, x0, cond=None, generator=None, *, t=None, w=None, eps=None)``
    and use :meth:`times_and_noise` for the (t, w, eps) they were not given (distributed training
    draws them for the global batch and passes each rank its slice).
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

    def state_dict(self) -> dict[str, Tensor]:
        """The time sampler's state (checkpointed for exact resume)."""
        return self.time_sampler.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.time_sampler.load_state_dict(state)


class DenoisingLoss(Objective):
    """E_t E_{x0, eps} w(t) lambda(t) ||x0_hat(F_t(x0, eps), t) - x0||^2, computed in the network's target space.

    ``weighting`` is one of ``WEIGHTINGS`` (module docstring); ``time_sampler``
    a ``TIME_SAMPLERS`` spec; ``gamma`` the min-SNR cap. Works for any process
    with the Process protocol: Gaussian-family parameterizations need a
    Gaussian process, the ``x0`` prediction works for any continuous one.

    ``norm="l1"`` is the restoration loss ||x0 - G_t(x_t)||_1 of cold
    diffusion, the Laplace ("l1 normal") posterior family of THEORY §4.2; the
    weightings are L2 identities, so L1 takes the network's own target only.
    """

    def __init__(
        self,
        weighting: str = "target",
        time_sampler: str | dict | TimeSampler | None = None,
        gamma: float = 5.0,
        norm: str = "l2",
    ) -> None:
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown loss weighting {weighting!r}; valid weightings: {', '.join(WEIGHTINGS)}")
        if norm not in NORMS:
            raise ValueError(f"unknown loss norm {norm!r}; valid norms: {', '.join(NORMS)}")
        if norm == "l1" and weighting != "target":
            raise ValueError(f"the l1 norm takes weighting 'target' (the weightings are L2 identities), got {weighting!r}")
        super().__init__(time_sampler)
        self.weighting = weighting
        self.gamma = float(gamma)
        self.norm = norm

    def rows(self, n: int) -> int:
        """How many rows of a batch of ``n`` are training points (all of them here)."""
        return n

    def regression_x0(self, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The clean value the network's target is built from at the training points ``x_t``: their own x0 here."""
        return x0[: x_t.shape[0]]

    def factor(self, denoiser: Denoiser, t: Tensor) -> Tensor | None:
        """lambda(t) / b_pred(t)^2 (None when the weighting is the network's own target: factor 1)."""
        if self.weighting in ("target", denoiser.prediction):
            return None
        _, b = denoiser.parameterization.coefficients(denoiser.process, t)
        return _x0_weight(denoiser.process, t, self.weighting, self.gamma) / b**2

    def __call__(
        self,
        denoiser: Denoiser,
        x0: Tensor,
        cond: Tensor | None = None,
        generator: torch.Generator | None = None,
        *,
        t: Tensor | None = None,
        w: Tensor | None = None,
        eps: Tensor | None = None,
    ) -> LossOutput:
        """The loss on a batch ``x0``; (t, w, eps) are drawn unless given (distributed training slices them)."""
        process = denoiser.process
        t, w, eps = self.times_and_noise(process, x0, generator, t, w, eps)
        n = self.rows(x0.shape[0])
        t, w, eps = t[:n], w[:n], eps[:n]
        x_t = process.corrupt(x0[:n], t, eps)
        pred = denoiser.raw(x_t, t, None if cond is None else cond[:n])
        target = from_x0(self.regression_x0(x0, x_t, t), x_t, t, process, denoiser.parameterization)
        dtype = torch.promote_types(pred.dtype, torch.float32)  # at least float32; float64 stays float64
        diff = pred.to(dtype) - target.to(dtype)
        err = (diff.abs() if self.norm == "l1" else diff.pow(2)).flatten(1).mean(1)
        factor = self.factor(denoiser, t)
        scale = w if factor is None else w * factor.reshape(-1)
        per_sample = err * scale.to(err.dtype)
        objective = (err if factor is None else err * factor.reshape(-1).to(err.dtype)).detach()
        return LossOutput(per_sample.mean(), per_sample, t, w, objective)

    def config(self) -> dict:
        return {"weighting": self.weighting, "time_sampler": self.time_sampler.config(), "gamma": self.gamma, "norm": self.norm}


CE_WEIGHTINGS = ("uniform", "elbo")


class CrossEntropyLoss(Objective):
    """E_t E_{x0, eps} w(t) [-log q(x0 | F_t(x0, eps), t)] for categorical q (THEORY §3.1 "discrete data", U1).

    The network outputs logits over the vocabulary at every position; the loss
    is the token cross-entropy at the positions the process says carry
    information about x0 (``process.loss_positions(x_t, x0)``: the masked ones
    for the absorbing process, THEORY §4.4; all of them by default).

    * ``weighting="uniform"``: the mean cross-entropy over those positions;
    * ``weighting="elbo"``: ``process.elbo_weight(t)`` times their *sum*,
      divided by the length L, so that E_t[...] with t from the uniform time
      sampler is an upper bound on -log p(x0) / L in nats per token (the
      absorbing-process ELBO; divide by ln 2 for bits per token).

    The mask column of a mask process's logits (id V) is not a data token and
    is dropped before the softmax, so it cannot absorb probability.
    """

    def __init__(self, weighting: str = "uniform", time_sampler: str | dict | TimeSampler | None = None) -> None:
        if weighting not in CE_WEIGHTINGS:
            raise ValueError(f"unknown cross-entropy weighting {weighting!r}; valid weightings: {', '.join(CE_WEIGHTINGS)}")
        super().__init__(time_sampler)
        self.weighting = weighting

    def __call__(
        self,
        denoiser,
        x0: Tensor,
        cond: Tensor | None = None,
        generator: torch.Generator | None = None,
        *,
        t: Tensor | None = None,
        w: Tensor | None = None,
        eps: Tensor | None = None,
    ) -> LossOutput:
        """The loss on a batch of token sequences ``x0`` (B, L); (t, w, eps) are drawn unless given."""
        process = denoiser.process
        t, w, eps = self.times_and_noise(process, x0, generator, t, w, eps)
        x_t = process.corrupt(x0, t, eps)
        logits = denoiser.raw(x_t, t, cond)
        vocab = getattr(process, "vocab_size", logits.shape[-1])
        logp = torch.log_softmax(logits[..., :vocab].float(), dim=-1)
        nll = -logp.gather(-1, x0.long().unsqueeze(-1)).squeeze(-1).flatten(1)
        positions = getattr(process, "loss_positions", None)
        keep = torch.ones_like(nll) if positions is None else positions(x_t, x0).flatten(1).to(nll.dtype)
        total = (nll * keep).sum(1)
        if self.weighting == "elbo":
            if not hasattr(process, "elbo_weight"):
                raise ValueError(f"process {process.name!r} has no ELBO weight; use weighting 'uniform'")
            objective = process.elbo_weight(t).reshape(-1).to(total.dtype) * total / nll.shape[1]
        else:
            objective = total / keep.sum(1).clamp(min=1.0)
        per_sample = objective * w.to(objective.dtype)
        return LossOutput(per_sample.mean(), per_sample, t, w, objective.detach())

    def config(self) -> dict:
        return {"weighting": self.weighting, "time_sampler": self.time_sampler.config()}


def empirical_posterior_mean(x: Tensor, z: Tensor, reference: Tensor) -> Tensor:
    """sum_j w_j y_j with PFGM's stable weights w_j ∝ (|x - y_j|^2 + z^2)^(-(N+1)/2) (THEORY §6.2, P2 step 1).

    These are the posterior weights of the gravity (Cauchy) kernel over the
    reference batch, computed as a softmax of -(N+1) log d_j, which is P2's
    (min_k d_k / d_j)^(N+1), renormalized. ``z`` is per sample (n,).
    """
    xf, yf = x.flatten(1).to(torch.float64), reference.flatten(1).to(torch.float64)
    d2 = torch.cdist(xf, yf).pow(2) + z.to(torch.float64).reshape(-1, 1) ** 2
    w = torch.softmax(-0.5 * (xf.shape[1] + 1) * torch.log(d2), dim=1)
    return (w @ yf).reshape(x.shape).to(x.dtype)


class PoissonFieldLoss(DenoisingLoss):
    """PFGM's objective (THEORY §6.2, P1 + P2): regress the normalized empirical field of the batch.

    (z, eps) come from the process's P1 perturbation (``process.perturb``) for
    the first ``points`` rows of the batch (all rows by default); the target is
    the field of the *whole* batch at those points, i.e. the ``pfgm``
    parameterization of the empirical posterior mean (:func:`empirical_posterior_mean`).
    A batch of B rows with ``points`` = n is the paper's large batch B / small batch n.
    The target is biased for finite B (normalization after averaging, §6.1);
    the unbiased alternative is :class:`DenoisingLoss` on the same process (the
    conditional-velocity target of §7.2, GF1).
    """

    def __init__(self, points: int | None = None) -> None:
        if points is not None and points < 1:
            raise ValueError(f"poisson_field loss: points must be >= 1, got {points}")
        super().__init__("target")
        self.points = points

    def draw(self, process: Process, x0: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """P1's (z, eps) for every row and unit weights."""
        perturb = getattr(process, "perturb", None)
        if perturb is None:
            raise ValueError(f"the poisson_field loss needs PFGM's perturbation (process 'pfgm'), got process {process.name!r}")
        z, eps = perturb(x0, generator)
        return z, torch.ones_like(z), eps

    def rows(self, n: int) -> int:
        """The small batch: the first ``points`` rows."""
        return min(self.points or n, n)

    def regression_x0(self, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The posterior mean of the whole batch's field at x_t (P2)."""
        return empirical_posterior_mean(x_t, t, x0)

    def config(self) -> dict:
        return {"objective": "poisson_field", "points": self.points}


class ClassificationLoss(Objective):
    """E_t E_{x0, y, eps} w(t) [-log p(y | F_t(x0, eps), t)]: a noise-aware classifier's cross-entropy (THEORY §2.2, G1).

    The batch's labels arrive as ``cond``. Times come from the time sampler as
    for a denoiser, so the classifier learns the noise levels a sampler visits;
    ``model`` is a :class:`udm.classifier.NoisyClassifier`.
    """

    def __call__(
        self,
        model: torch.nn.Module,
        x0: Tensor,
        cond: Tensor | None = None,
        generator: torch.Generator | None = None,
        *,
        t: Tensor | None = None,
        w: Tensor | None = None,
        eps: Tensor | None = None,
    ) -> LossOutput:
        """The cross-entropy on a labelled batch; (t, w, eps) are drawn unless given."""
        if cond is None:
            raise ValueError("the classification objective needs class labels: train it on labelled data")
        process = model.process
        t, w, eps = self.times_and_noise(process, x0, generator, t, w, eps)
        logits = model.raw(process.corrupt(x0, t, eps), t)
        ce = torch.nn.functional.cross_entropy(logits.float(), cond.to(logits.device), reduction="none")
        per_sample = ce * w.to(ce.dtype)
        return LossOutput(per_sample.mean(), per_sample, t, w, ce.detach())

    def config(self) -> dict:
        return {"objective": "classification", "time_sampler": self.time_sampler.config()}


OBJECTIVES = ("auto", "denoising", "cross_entropy", "poisson_field", "classification")


def make_loss(
    prediction: str,
    weighting: str | None = None,
    time_sampler: str | dict | TimeSampler | None = None,
    gamma: float = 5.0,
    norm: str = "l2",
    objective: str = "auto",
    points: int | None = None,
) -> Objective:
    """The training objective a config asks for: cross-entropy for the ``logits`` prediction, else denoising.

    ``weighting=None`` (or ``"target"`` with logits) takes each loss's default.
    ``objective="poisson_field"`` is PFGM's P1 + P2 objective on ``points`` rows per batch;
    ``objective="classification"`` trains a noise-aware classifier (the prediction is not used).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; valid: {', '.join(OBJECTIVES)}")
    if objective == "classification":
        if weighting not in (None, "target") or norm != "l2" or points is not None:
            raise ValueError("the classification objective is a cross-entropy: it takes no loss weighting, norm or points")
        return ClassificationLoss(time_sampler)
    if objective == "poisson_field":
        if prediction != "pfgm" or weighting not in (None, "target"):
            raise ValueError("the poisson_field objective trains the 'pfgm' prediction with weighting 'target'")
        return PoissonFieldLoss(points)
    if objective == "cross_entropy" and prediction != "logits":
        raise ValueError("the cross_entropy objective needs the 'logits' prediction")
    if points is not None:
        raise ValueError("loss.points applies to the poisson_field objective only")
    if prediction == "logits":
        if norm != "l2":
            raise ValueError("loss.norm applies to the denoising loss; the logits prediction is trained by cross-entropy")
        return CrossEntropyLoss("uniform" if weighting in (None, "target") else weighting, time_sampler)
    return DenoisingLoss(weighting or "target", time_sampler, gamma, norm)
