"""The Gaussian ("hot") family x_t = alpha_t x0 + sigma_t eps (THEORY §0.2, §4.1).

One process class, :class:`GaussianProcess`, parameterized by a
:class:`Schedule` that gives alpha_t and sigma_t (and their time derivatives)
as functions of continuous time. Every member shares:

* log-SNR ``log(alpha^2 / sigma^2)`` and its inverse (used by DPM-Solver grids);
* the forward SDE dx = f(t) x dt + g(t) dw with f = alpha'/alpha and
  g^2 = d(sigma^2)/dt - 2 f sigma^2 = -sigma^2 d(log-SNR)/dt (THEORY §9.3);
* the posterior q(x_s | x_t, x0) of DDPM (THEORY §4.1, "DDPM" row);
* the inverse F_t^{-1}(x0, x_t) = (x_t - alpha_t x0) / sigma_t, so K1/K2 apply.

Time is continuous. Discrete DDPM is :class:`DDPMSchedule` on the integer grid
t = 0..N of the DDPM paper: ``alpha_t^2 = alphas_cumprod[t - 1]`` for t >= 1
(diffusers' timestep k is our t = k + 1) and t = 0 is the clean data.
Between integers log(alpha_t^2) is linear, so the continuous-time drift
-beta(t)/2 equals the per-step log(1 - beta_k)/2 of the discrete chain. A
table ending at alphas_cumprod = 0 (zero terminal SNR, Lin et al. 2024) has
alpha_t^2 itself linear on its last segment, where the logarithm cannot reach 0.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .. import rng
from ..numerics import invert_increasing
from .base import Process, time_tensor
from .noise import GaussianNoise, NoiseLaw, get_noise

Tensor = torch.Tensor


def _t64(t: float | Tensor) -> Tensor:
    return torch.as_tensor(t, dtype=torch.float64)


class Schedule(ABC):
    """alpha_t, sigma_t on [0, t_max] with alpha_0 = 1, sigma_0 = 0 (the clean data)."""

    name: str = "schedule"
    t_max: float = 1.0
    t_eps: float = 1e-3
    default_grid: str = "uniform"

    @abstractmethod
    def alpha(self, t: Tensor) -> Tensor:
        """Signal scale alpha_t (float64 in, float64 out)."""

    @abstractmethod
    def sigma(self, t: Tensor) -> Tensor:
        """Noise scale sigma_t."""

    @abstractmethod
    def dalpha(self, t: Tensor) -> Tensor:
        """d alpha_t / dt."""

    @abstractmethod
    def dsigma(self, t: Tensor) -> Tensor:
        """d sigma_t / dt."""

    def log_snr(self, t: Tensor) -> Tensor:
        """log(alpha_t^2 / sigma_t^2), decreasing in t."""
        return 2.0 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    @abstractmethod
    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        """The inverse of :meth:`log_snr`."""

    def config(self) -> dict:
        """The constructor arguments, for ``repr`` and checkpoints."""
        return {}


class VPSchedule(Schedule):
    """Variance preserving: alpha_t^2 + sigma_t^2 = 1, defined through log(alpha_t^2) =: l(t)."""

    @abstractmethod
    def log_alpha_bar(self, t: Tensor) -> Tensor:
        """l(t) = log(alpha_t^2) (DDPM's log alphas_cumprod)."""

    @abstractmethod
    def dlog_alpha_bar(self, t: Tensor) -> Tensor:
        """dl/dt = -beta(t)."""

    @abstractmethod
    def t_from_log_alpha_bar(self, lab: Tensor) -> Tensor:
        """The inverse of :meth:`log_alpha_bar`."""

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(0.5 * self.log_alpha_bar(t))

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(self.log_alpha_bar(t)))

    def dalpha(self, t: Tensor) -> Tensor:
        return 0.5 * self.dlog_alpha_bar(t) * self.alpha(t)

    def dsigma(self, t: Tensor) -> Tensor:
        lab = self.log_alpha_bar(t)
        return -0.5 * self.dlog_alpha_bar(t) * torch.exp(lab) / torch.sqrt(-torch.expm1(lab))

    def log_snr(self, t: Tensor) -> Tensor:
        lab = self.log_alpha_bar(t)
        return lab - torch.log(-torch.expm1(lab))

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        return self.t_from_log_alpha_bar(torch.nn.functional.logsigmoid(_t64(log_snr)))


def ddpm_betas(kind: str, n: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """beta_1..beta_N of DDPM in float64 (Ho et al. 2020; Nichol & Dhariwal 2021 for "cosine").

    ``linear``: linspace(beta_start, beta_end, N); ``scaled_linear``: the squares of
    linspace(sqrt(beta_start), sqrt(beta_end), N) (Stable Diffusion);
    ``cosine``: beta_k = min(1 - abar(k/N)/abar((k-1)/N), 0.999) with
    abar(s) = cos^2((s + 0.008)/1.008 * pi/2) (diffusers' "squaredcos_cap_v2").
    """
    if kind == "linear":
        return np.linspace(beta_start, beta_end, n, dtype=np.float64)
    if kind == "scaled_linear":
        return np.linspace(beta_start**0.5, beta_end**0.5, n, dtype=np.float64) ** 2
    if kind == "cosine":
        s = np.arange(n + 1, dtype=np.float64) / n
        abar = np.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        return np.minimum(1.0 - abar[1:] / abar[:-1], 0.999)
    raise ValueError(f"unknown DDPM beta schedule {kind!r}; valid: cosine, linear, scaled_linear")


class DDPMSchedule(VPSchedule):
    """Discrete DDPM on t = 0..N (t = 0 clean), with log(alpha_t^2) linear between integers.

    ``alphas_cumprod`` equals the DDPM paper's (and diffusers' DDPMScheduler's,
    there indexed k = t - 1). Pass ``alphas_cumprod=`` to use an exact table
    from elsewhere (e.g. a pretrained model's). Its last entry may be 0 (zero
    terminal SNR, diffusers' ``rescale_betas_zero_snr``): then alpha_N = 0,
    sigma_N = 1, and on (N - 1, N] alpha_t^2 is linear in t instead of its log.
    """

    name = "ddpm"

    def __init__(
        self,
        beta_schedule: str = "linear",
        num_train_steps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        alphas_cumprod: Sequence[float] | np.ndarray | Tensor | None = None,
    ) -> None:
        if alphas_cumprod is None:
            if num_train_steps < 1:
                raise ValueError(f"num_train_steps must be >= 1, got {num_train_steps}")
            betas = ddpm_betas(beta_schedule, num_train_steps, beta_start, beta_end)
            self.betas = torch.from_numpy(betas)
            self.alphas_cumprod = torch.cumprod(1.0 - self.betas, 0)
        else:
            ac = torch.as_tensor(np.asarray(alphas_cumprod, dtype=np.float64))
            if ac.ndim != 1 or not ((ac[1:] < ac[:-1]).all() and ac[0] < 1 and ac[-1] >= 0 and (ac.numel() > 1 or ac[0] > 0)):
                raise ValueError("alphas_cumprod must be a 1-D strictly decreasing sequence in (0, 1) (its last entry may be 0)")
            self.alphas_cumprod = ac
            self.betas = 1.0 - ac / torch.cat([ac.new_ones(1), ac[:-1]])
            beta_schedule = "custom"
        self.beta_schedule = beta_schedule
        self.num_train_steps = int(self.alphas_cumprod.numel())
        self.t_max = float(self.num_train_steps)
        self.t_eps = 1.0
        self._lab = torch.cat([torch.zeros(1, dtype=torch.float64), torch.log(self.alphas_cumprod)])
        #: True when alphas_cumprod ends at 0: the last segment is linear in alpha_t^2 (class docstring)
        self.zero_terminal = bool(self.alphas_cumprod[-1] == 0)
        self._beta_start, self._beta_end = beta_start, beta_end

    def _segment(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t = _t64(t)
        lab = self._lab.to(t.device)
        k = torch.clamp(torch.floor(t), 0, self.num_train_steps - 1).long()
        return k, lab

    def _on_zero_tail(self, k: Tensor) -> Tensor:
        """True where segment k is the last one of a table ending at alpha_bar = 0."""
        return (k == self.num_train_steps - 1) & self.zero_terminal

    def _log_slope(self, k: Tensor, lab: Tensor) -> Tensor:
        """lab[k + 1] - lab[k], kept finite (0) on a zero-terminal tail, which the callers replace."""
        return torch.where(self._on_zero_tail(k), torch.zeros_like(lab[k]), lab[k + 1] - lab[k])

    def log_alpha_bar(self, t: Tensor) -> Tensor:
        t = _t64(t)
        k, lab = self._segment(t)
        w = t - k
        log_linear = lab[k] + w * self._log_slope(k, lab)
        if not self.zero_terminal:
            return log_linear
        return torch.where(self._on_zero_tail(k), lab[k] + torch.log1p(-w.clamp(max=1.0)), log_linear)

    def dlog_alpha_bar(self, t: Tensor) -> Tensor:
        t = _t64(t)
        k, lab = self._segment(t)
        if not self.zero_terminal:
            return lab[k + 1] - lab[k]
        return torch.where(self._on_zero_tail(k), -1.0 / (1.0 - (t - k)), self._log_slope(k, lab))

    def t_from_log_alpha_bar(self, v: Tensor) -> Tensor:
        v = _t64(v)
        lab = self._lab.to(v.device)
        # lab is decreasing; search on its negation (increasing)
        k = torch.clamp(torch.searchsorted(-lab, -v.contiguous(), right=True) - 1, 0, self.num_train_steps - 1)
        slope = self._log_slope(k, lab)
        t = k + (v - lab[k]) / torch.where(slope == 0, torch.ones_like(slope), slope)
        if self.zero_terminal:
            t = torch.where(self._on_zero_tail(k), k - torch.expm1(v - lab[k]), t)
        return torch.clamp(t, 0.0, self.t_max)

    def config(self) -> dict:
        if self.beta_schedule == "custom":
            return {"alphas_cumprod": self.alphas_cumprod.tolist()}
        return {
            "beta_schedule": self.beta_schedule,
            "num_train_steps": self.num_train_steps,
            "beta_start": self._beta_start,
            "beta_end": self._beta_end,
        }


class VPLinearSchedule(VPSchedule):
    """Continuous VP with linear beta(t) = beta_min + t (beta_max - beta_min) on [0, 1] (Song et al. 2021).

    log(alpha_t^2) = -beta_min t - (beta_max - beta_min) t^2 / 2.
    """

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_eps: float = 1e-3) -> None:
        if not 0 <= beta_min < beta_max:
            raise ValueError(f"need 0 <= beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max, self.t_eps = float(beta_min), float(beta_max), float(t_eps)

    def log_alpha_bar(self, t: Tensor) -> Tensor:
        t = _t64(t)
        return -self.beta_min * t - 0.5 * (self.beta_max - self.beta_min) * t * t

    def dlog_alpha_bar(self, t: Tensor) -> Tensor:
        return -(self.beta_min + _t64(t) * (self.beta_max - self.beta_min))

    def t_from_log_alpha_bar(self, v: Tensor) -> Tensor:
        d, b0 = self.beta_max - self.beta_min, self.beta_min
        v = _t64(v)
        # solve d/2 t^2 + b0 t + v = 0 for t >= 0, in the cancellation-free form
        return -2.0 * v / (b0 + torch.sqrt(b0 * b0 - 2.0 * d * v))

    def config(self) -> dict:
        return {"beta_min": self.beta_min, "beta_max": self.beta_max, "t_eps": self.t_eps}


class VPCosineSchedule(VPSchedule):
    """Continuous cosine VP: alpha_t^2 = cos^2((t+s)/(1+s) pi/2) / cos^2(s/(1+s) pi/2) (Nichol & Dhariwal)."""

    name = "vp_cosine"

    def __init__(self, s: float = 0.008, t_max: float = 0.9946, t_eps: float = 1e-3) -> None:
        self.s, self.t_max, self.t_eps = float(s), float(t_max), float(t_eps)
        self._c0 = math.log(math.cos(self.s / (1 + self.s) * math.pi / 2))

    def _phase(self, t: Tensor) -> Tensor:
        return (_t64(t) + self.s) / (1 + self.s) * math.pi / 2

    def log_alpha_bar(self, t: Tensor) -> Tensor:
        return (2.0 * (torch.log(torch.cos(self._phase(t))) - self._c0)).clamp_max(0.0)

    def dlog_alpha_bar(self, t: Tensor) -> Tensor:
        return -torch.tan(self._phase(t)) * math.pi / (1 + self.s)

    def t_from_log_alpha_bar(self, v: Tensor) -> Tensor:
        phase = torch.acos(torch.exp(0.5 * _t64(v) + self._c0))
        return phase * 2 / math.pi * (1 + self.s) - self.s

    def config(self) -> dict:
        return {"s": self.s, "t_max": self.t_max, "t_eps": self.t_eps}


class SubVPSchedule(VPLinearSchedule):
    """sub-VP (Song et al. 2021): alpha_t as VP-linear, sigma_t = 1 - alpha_t^2."""

    name = "subvp"

    def sigma(self, t: Tensor) -> Tensor:
        return -torch.expm1(self.log_alpha_bar(t))

    def dsigma(self, t: Tensor) -> Tensor:
        return -self.dlog_alpha_bar(t) * torch.exp(self.log_alpha_bar(t))

    def log_snr(self, t: Tensor) -> Tensor:
        lab = self.log_alpha_bar(t)
        return lab - 2.0 * torch.log(-torch.expm1(lab))

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        # a / (1 - a)^2 = s with a = alpha^2 has the root a = 2s / (2s + 1 + sqrt(4s + 1))
        s = torch.exp(_t64(log_snr))
        a = 2.0 * s / (2.0 * s + 1.0 + torch.sqrt(4.0 * s + 1.0))
        return self.t_from_log_alpha_bar(torch.log(a))


class VESchedule(Schedule):
    """Variance exploding with geometric sigma_t = sigma_min (sigma_max/sigma_min)^t on (0, 1]; alpha = 1.

    sigma_0 = 0 is the clean data (THEORY §0.2, VE/heat form). The jump from
    sigma_min to 0 at t -> 0 is the final "denoise" step of Song et al.'s samplers.
    """

    name = "ve"
    default_grid = "uniform"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, t_eps: float = 1e-5) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max, self.t_eps = float(sigma_min), float(sigma_max), float(t_eps)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(_t64(t))

    def dalpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(_t64(t))

    def sigma(self, t: Tensor) -> Tensor:
        t = _t64(t)
        return torch.where(t > 0, self.sigma_min * torch.exp(t * self._log_ratio), torch.zeros_like(t))

    def dsigma(self, t: Tensor) -> Tensor:
        return self.sigma(t) * self._log_ratio

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        sigma = torch.exp(-0.5 * _t64(log_snr))
        return torch.clamp(torch.log(sigma / self.sigma_min) / self._log_ratio, min=0.0)

    def config(self) -> dict:
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "t_eps": self.t_eps}


class EDMSchedule(Schedule):
    """EDM (Karras et al. 2022): alpha_t = 1, sigma_t = t, on [0, sigma_max]."""

    name = "edm"
    default_grid = "karras"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.t_eps, self.t_max = float(sigma_min), float(sigma_max)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(_t64(t))

    def dalpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(_t64(t))

    def sigma(self, t: Tensor) -> Tensor:
        return _t64(t)

    def dsigma(self, t: Tensor) -> Tensor:
        return torch.ones_like(_t64(t))

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        return torch.exp(-0.5 * _t64(log_snr))

    def config(self) -> dict:
        return {"sigma_min": self.t_eps, "sigma_max": self.t_max}


class RectifiedFlowSchedule(Schedule):
    """Rectified flow / linear interpolant: alpha_t = 1 - t, sigma_t = t on [0, 1] (THEORY §8.1, example 1)."""

    name = "rectified_flow"

    def __init__(self, t_eps: float = 1e-3) -> None:
        self.t_eps = float(t_eps)

    def alpha(self, t: Tensor) -> Tensor:
        return 1.0 - _t64(t)

    def dalpha(self, t: Tensor) -> Tensor:
        return -torch.ones_like(_t64(t))

    def sigma(self, t: Tensor) -> Tensor:
        return _t64(t)

    def dsigma(self, t: Tensor) -> Tensor:
        return torch.ones_like(_t64(t))

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        return torch.sigmoid(-0.5 * _t64(log_snr))

    def config(self) -> dict:
        return {"t_eps": self.t_eps}


def _on_tensors(fn: Callable[[Tensor], Tensor]) -> Callable[[float | Tensor], Tensor]:
    return lambda v: fn(torch.as_tensor(v, dtype=torch.float64))


_EXPRESSION_NAMES = {
    **{name: _on_tensors(getattr(torch, name)) for name in ("exp", "log", "sqrt", "expm1", "log1p", "sinh", "cosh", "tanh", "tan", "sin")},
    "pi": math.pi,
}


def expression(text: str, variable: str = "t") -> Callable[[Tensor], Tensor]:
    """A function of one tensor from a formula such as ``"80 * t**2"`` (configs cannot hold Python callables).

    Only the variable, numbers, arithmetic and ``exp log sqrt expm1 log1p sinh cosh tanh tan sin pi`` are allowed.
    """
    try:
        code = compile(text, "<expression>", "eval")
    except SyntaxError as err:
        raise ValueError(f"cannot parse the expression {text!r}: {err.msg}") from None
    unknown = sorted(set(code.co_names) - set(_EXPRESSION_NAMES) - {variable})
    if unknown:
        raise ValueError(f"the expression {text!r} uses {unknown}; allowed: {variable}, {', '.join(_EXPRESSION_NAMES)}")

    def fn(t: Tensor) -> Tensor:
        value = eval(code, {"__builtins__": {}}, {**_EXPRESSION_NAMES, variable: t})  # names checked above
        return torch.as_tensor(value, dtype=torch.float64) + torch.zeros_like(t)

    return fn


class HeatSchedule(Schedule):
    """The heat-equation ODE (THEORY §5.1): alpha = 1 and a user-chosen increasing sigma_t with sigma_0 = 0.

    dx/dt = -sigma' sigma grad log p_t, p_t = p_0 * N(0, sigma_t^2 I). ``sigma`` is a
    formula in t (see :func:`expression`) or a Python callable on float64 tensors;
    sigma' comes from autograd and the inverse clock from bisection, so any smooth
    increasing choice works. VE (geometric sigma) and EDM (sigma = t) are special cases.
    """

    name = "heat"

    def __init__(self, sigma: str | Callable[[Tensor], Tensor] = "80 * t**2", t_max: float = 1.0, t_eps: float = 5e-3) -> None:
        self.formula = sigma if isinstance(sigma, str) else getattr(sigma, "__name__", "custom")
        self._sigma = expression(sigma) if isinstance(sigma, str) else sigma
        if not 0 < t_eps < t_max:
            raise ValueError(f"heat schedule: need 0 < t_eps < t_max, got t_eps={t_eps}, t_max={t_max}")
        self.t_max, self.t_eps = float(t_max), float(t_eps)
        grid = torch.linspace(0.0, self.t_max, 1001, dtype=torch.float64)
        values = self._sigma(grid)
        if not bool(torch.isfinite(values).all()):
            raise ValueError(f"heat schedule: sigma_t = {self.formula} is not finite on [0, {self.t_max:g}]")
        if abs(float(values[0])) > 1e-12:
            raise ValueError(f"heat schedule: sigma_0 must be 0 (clean data at t = 0), got {float(values[0]):g} for {self.formula}")
        if not bool((values[1:] > values[:-1]).all()):
            raise ValueError(f"heat schedule: sigma_t = {self.formula} must increase strictly on [0, {self.t_max:g}]")

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(_t64(t))

    def dalpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(_t64(t))

    def sigma(self, t: Tensor) -> Tensor:
        return self._sigma(_t64(t))

    def dsigma(self, t: Tensor) -> Tensor:
        with torch.enable_grad():
            tt = _t64(t).detach().clone().requires_grad_(True)
            (g,) = torch.autograd.grad(self._sigma(tt).sum(), tt)
        return g

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        target = torch.exp(-0.5 * _t64(log_snr)).clamp(float(self.sigma(0.0)), float(self.sigma(self.t_max)))
        return invert_increasing(self._sigma, target, 0.0, self.t_max)

    def config(self) -> dict:
        return {"sigma": self.formula, "t_max": self.t_max, "t_eps": self.t_eps}


class LinearProcess(Process):
    """x_t = alpha_t x0 + sigma_t eps for any :class:`Schedule` and any noise law q (THEORY §4.1, §7.4, §8.1).

    With q = N(0, I) this is the Gaussian family (:class:`GaussianProcess`).
    Other laws (``udm.processes.noise``: uniform box, Laplace, Student-t /
    PFGM++, radial CDFs) keep the linear path, so the conditional velocity
    alpha' x0 + sigma' eps, F_t^{-1}, the kernel q((x - alpha x0)/sigma)/sigma^d
    and every ODE sampler carry over; what needs Gaussian noise (the SDE, the
    DDPM posterior, the score) lives on :class:`GaussianProcess` only.
    """

    def __init__(self, schedule: Schedule, name: str | None = None, noise: str | dict | NoiseLaw | None = None) -> None:
        self.schedule = schedule
        self.noise = get_noise(noise)
        self.noise_is_standard_normal = self.noise.is_standard_normal
        self.name = name or schedule.name
        self.t_min = 0.0
        self.t_max = float(schedule.t_max)
        self.t_eps = float(schedule.t_eps)
        self.default_grid_name = schedule.default_grid

    # --- coefficients (float64 in, float64 out) -------------------------------------------------
    def alpha(self, t: float | Tensor) -> Tensor:
        """alpha_t."""
        return self.schedule.alpha(_t64(t))

    def sigma(self, t: float | Tensor) -> Tensor:
        """sigma_t."""
        return self.schedule.sigma(_t64(t))

    def dalpha(self, t: float | Tensor) -> Tensor:
        """d alpha_t / dt."""
        return self.schedule.dalpha(_t64(t))

    def dsigma(self, t: float | Tensor) -> Tensor:
        """d sigma_t / dt."""
        return self.schedule.dsigma(_t64(t))

    def log_snr(self, t: float | Tensor) -> Tensor:
        """log(alpha_t^2 / sigma_t^2)."""
        return self.schedule.log_snr(_t64(t))

    def t_from_log_snr(self, log_snr: float | Tensor) -> Tensor:
        """The time at which the log-SNR equals ``log_snr`` (inverse of :meth:`log_snr`)."""
        return self.schedule.t_from_log_snr(_t64(log_snr))

    def dlog_snr(self, t: float | Tensor) -> Tensor:
        """d log-SNR / dt = 2 alpha'/alpha - 2 sigma'/sigma (negative: the SNR falls with t)."""
        return 2.0 * self.dalpha(t) / self.alpha(t) - 2.0 * self.dsigma(t) / self.sigma(t)

    def sigma_tilde(self, t: float | Tensor) -> Tensor:
        """sigma_t / alpha_t: the noise level of x_t / alpha_t = x0 + (sigma/alpha) eps (THEORY §5.2, VP to VE)."""
        return self.sigma(t) / self.alpha(t)

    def t_from_sigma_tilde(self, sigma_tilde: float | Tensor) -> Tensor:
        """Inverse of :meth:`sigma_tilde` (through the log-SNR)."""
        return self.t_from_log_snr(-2.0 * torch.log(_t64(sigma_tilde)))

    def log_kernel(self, x_t: Tensor, x0: Tensor, t: float | Tensor) -> Tensor:
        """log p_t(x_t | x0) = log q((x_t - alpha_t x0) / sigma_t) - d log sigma_t (THEORY §8.1, example 2), per sample."""
        tt = time_tensor(t, x_t)
        a, s = self.alpha(tt), self.sigma(tt)
        eps = (x_t.to(torch.float64) - a * x0.to(torch.float64)) / s
        return self.noise.log_prob(eps) - x_t[0].numel() * torch.log(s.reshape(-1))

    # --- the Process protocol -----------------------------------------------------------------
    def corrupt(self, x0: Tensor, t: float | Tensor, eps: Tensor) -> Tensor:
        """F_t(x0, eps) = alpha_t x0 + sigma_t eps (THEORY §4.1)."""
        tt = time_tensor(t, x0)
        return self.alpha(tt).to(x0.dtype) * x0 + self.sigma(tt).to(x0.dtype) * eps

    def recover_noise(self, x0: Tensor, x_t: Tensor, t: float | Tensor, *, generator: rng.GeneratorLike = None) -> Tensor:
        """F_t^{-1}(x0, x_t) = (x_t - alpha_t x0) / sigma_t (THEORY §4.1); needs sigma_t > 0."""
        tt = time_tensor(t, x_t)
        return (x_t - self.alpha(tt).to(x_t.dtype) * x0) / self.sigma(tt).to(x_t.dtype)

    def sample_noise(
        self,
        shape: Sequence[int],
        generator: rng.GeneratorLike = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """eps ~ q, the process's noise law."""
        return self.noise.sample(shape, generator, dtype=dtype, device=device)

    def prior(
        self,
        shape: Sequence[int],
        generator: rng.GeneratorLike = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """x_T = alpha_T x0 + sigma_T eps approximated by sigma_T eps (alpha_T ~ 0, or sigma_T >> the data scale)."""
        return float(self.sigma(self.t_max)) * self.noise.sample(shape, generator, dtype=dtype, device=device)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.schedule.config().items() if k != "alphas_cumprod")
        noise = "" if self.noise_is_standard_normal else f", noise={self.noise!r}"
        return f"{type(self).__name__}({self.name!r}, {type(self.schedule).__name__}({args}){noise})"


class GaussianProcess(LinearProcess):
    """x_t = alpha_t x0 + sigma_t eps with eps ~ N(0, I): the Gaussian ("hot") family (THEORY §4.1)."""

    def __init__(self, schedule: Schedule, name: str | None = None) -> None:
        super().__init__(schedule, name, GaussianNoise())

    def sde(self, t: float | Tensor) -> tuple[Tensor, Tensor]:
        """Forward SDE dx = f(t) x dt + g(t) dw: returns (f(t), g(t)^2) (THEORY §9.3).

        f = alpha'/alpha and g^2 = 2 sigma sigma' - 2 f sigma^2, the unique
        linear SDE whose marginals given x0 are N(alpha_t x0, sigma_t^2 I).
        """
        a, s = self.alpha(t), self.sigma(t)
        f = self.dalpha(t) / a
        g2 = 2.0 * s * self.dsigma(t) - 2.0 * f * s * s
        return f, g2

    def posterior(
        self, x_t: Tensor, x0: Tensor, t: float | Tensor, s: float | Tensor
    ) -> tuple[Tensor, Tensor]:
        """Mean and variance of q(x_s | x_t, x0) for s < t (THEORY §4.1; DDPM eq. 7 for s = t - 1).

        With alpha_{t|s} = alpha_t/alpha_s and sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2:
        mean = alpha_{t|s} sigma_s^2/sigma_t^2 x_t + alpha_s sigma_{t|s}^2/sigma_t^2 x0,
        var = sigma_{t|s}^2 sigma_s^2 / sigma_t^2.
        """
        tt, ss = time_tensor(t, x_t), time_tensor(s, x_t)
        a_t, s_t, a_s, s_s = self.alpha(tt), self.sigma(tt), self.alpha(ss), self.sigma(ss)
        a_ts = a_t / a_s
        var_ts = s_t**2 - a_ts**2 * s_s**2
        c_xt = a_ts * s_s**2 / s_t**2
        c_x0 = a_s * var_ts / s_t**2
        var = var_ts * s_s**2 / s_t**2
        mean = c_xt.to(x_t.dtype) * x_t + c_x0.to(x_t.dtype) * x0
        return mean, var.to(x_t.dtype)

    def transition(self, x_s: Tensor, s: float | Tensor, t: float | Tensor, *, generator: rng.GeneratorLike = None) -> Tensor:
        """x_t ~ q(x_t | x_s) for s < t: x_t = alpha_{t|s} x_s + sigma_{t|s} eps (THEORY §4.1; the forward SDE's transition).

        alpha_{t|s} = alpha_t/alpha_s and sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2, so
        x_s ~ p_s gives x_t ~ p_t; from the clean end (s = t_min) it is F_t(x_s, eps).
        """
        ss, tt = time_tensor(s, x_s), time_tensor(t, x_s)
        a_ts = self.alpha(tt) / self.alpha(ss)
        var = (self.sigma(tt) ** 2 - a_ts**2 * self.sigma(ss) ** 2).clamp_min(0.0)
        return a_ts.to(x_s.dtype) * x_s + var.sqrt().to(x_s.dtype) * rng.randn_like(x_s, generator)

