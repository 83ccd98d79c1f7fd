"""Shared machinery of the discrete token processes (THEORY §4.3 edit, §4.4 mask).

Data are int64 token sequences x0 of shape (B, L'), ids in 0..V-1, with
L' <= ``seq_len``. A position is *corrupted* (replaced by another token for the
edit model, by [MASK] for the mask model) or left as it is; which positions
are corrupted is decided by the noise

    eps = keys u_i ~ U[0, 1), one per position (the edit model adds an offset uniform),

through one of two schedules:

* ``"count"``: t in {0, 1, .., L} is the *number* of corrupted positions
  (THEORY §4.3/§4.4 literally: "choose t random positions"). Position i is
  corrupted iff rank(u_i) < t, where rank is the 0-based position of u_i in
  the sorted keys of its sequence; with i.i.d. keys that is a uniformly random
  t-subset. Times are integers: t_max = L, t_eps = 1.
* ``"linear"`` / ``"cosine"``: continuous t in [0, 1]; each position is
  corrupted independently with probability m(t), m(t) = t or
  1 - cos(pi t / 2), i.e. iff u_i < m(t) (the MD4 / MDLM parameterisation).

In both cases the corrupted set only grows with t for fixed keys, so F_t is a
"reveal by key order" map. Given (x0, x_t) the corrupted set C is visible
(mask ids, or the positions where x_t != x0 for the invertible edit model),
but the keys are not: :meth:`DiscreteProcess.recover_noise` therefore draws
the keys from their conditional law given C (THEORY §3.1, K1 with a random
inverse). For ``count`` the keys of C are i.i.d. below those of the other
positions (C gets the |C| smallest ranks, in uniformly random order); for the
continuous schedules keys of C are U[0, m(t)) and the others U[m(t), 1). This
conditional law is exactly the law of eps given (x0, x_t), so K1
``x_s = F_s(x0_hat, F_t^{-1}(x0_hat, x_t))`` satisfies the marginal identity
of §3.1 and, concretely, keeps a uniformly random subset of C corrupted
(count: s of the t; continuous: each with probability m(s)/m(t)) and reverts
the rest to x0_hat. That is the "improved sampler" of §4.3 and §4.4; the
re-noising baseline K0 comes for free from :mod:`udm.kernels`.
"""

from __future__ import annotations

import math
import numbers
from abc import abstractmethod
from collections.abc import Sequence

import torch

from .. import rng
from .base import TokenProcessBase

Tensor = torch.Tensor

SCHEDULES = ("count", "linear", "cosine")


def sample_categorical(probs: Tensor, generator: rng.GeneratorLike = None) -> Tensor:
    """One draw per row of the (unnormalised, non-negative) ``probs`` (..., K), by inverse CDF.

    Uses one uniform per row from :func:`udm.rng.rand`, so a list of
    per-sample generators gives per-sample reproducible draws.
    """
    probs = probs.to(torch.float64)
    cdf = probs.cumsum(-1)
    u = rng.rand(probs.shape[:-1], generator, dtype=torch.float64, device=probs.device)
    idx = (cdf < (u * cdf[..., -1]).unsqueeze(-1)).sum(-1)
    return idx.clamp_max(probs.shape[-1] - 1)


def key_ranks(keys: Tensor) -> Tensor:
    """The 0-based rank of each key within its sequence (last axis): 0 for the smallest."""
    return torch.argsort(torch.argsort(keys, dim=-1), dim=-1)


class DiscreteProcess(TokenProcessBase):
    """Corrupt a uniformly random subset of the positions of a token sequence (THEORY §4.3, §4.4).

    This base holds the schedule, the keys and their conditional law
    (:meth:`_corruption_mask`, :meth:`_draw_keys`), validation and the exact
    transition law :meth:`log_kernel`. Subclasses say what a corrupted
    position becomes (:meth:`corrupt`), how to see the corrupted set
    (:meth:`corrupted`) and the probability of one particular replacement
    token (:meth:`_log_replacement`), and give the prior, the inverse
    (:meth:`recover_noise`) and the map from a denoiser's output to x0_hat
    (:meth:`estimate_x0`).

    ``temperature`` divides the logits before the softmax when x0_hat is drawn
    from them (0 = greedy argmax).
    """

    noise_is_standard_normal = False
    t_min = 0.0
    default_grid_name = "uniform"

    def __init__(self, vocab_size: int, seq_len: int, schedule: str = "count", temperature: float = 1.0) -> None:
        for what, value in (("vocab_size", vocab_size), ("seq_len", seq_len)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{what} must be an integer >= 1, got {value!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r} for process {self.name!r}; choose one of {', '.join(SCHEDULES)}")
        if not temperature >= 0.0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
        self.vocab_size = int(vocab_size)
        self.seq_len = int(seq_len)
        self.schedule = schedule
        self.temperature = float(temperature)
        self.integer_times = schedule == "count"
        if schedule == "count":
            self.t_max, self.t_eps = float(seq_len), 1.0
        else:
            self.t_max, self.t_eps = 1.0, 1e-3

    def config(self) -> dict:
        """The constructor options (JSON-able), for checkpoints and ``repr``."""
        return {
            "vocab_size": self.vocab_size,
            "seq_len": self.seq_len,
            "schedule": self.schedule,
            "temperature": self.temperature,
        }

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({opts})"

    # --- validation -------------------------------------------------------------------------------
    def _check_tokens(self, x: Tensor, high: int, what: str) -> None:
        if not isinstance(x, Tensor) or x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            dtype = x.dtype if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"process {self.name!r} expects integer token ids for {what}, got {dtype}")
        if x.ndim < 1:
            raise ValueError(f"process {self.name!r} expects {what} of shape (..., L), got a scalar")
        n = x.shape[-1]
        if not 1 <= n <= self.seq_len:
            raise ValueError(
                f"{what} has length {n} but process {self.name!r} has seq_len={self.seq_len}: "
                f"sequences of length 1..{self.seq_len} are allowed"
            )
        if x.numel():
            lo, hi = (int(v) for v in torch.aminmax(x))
            if lo < 0 or hi >= high:
                bad = lo if lo < 0 else hi
                raise ValueError(
                    f"token id {bad} in {what} is outside the range [0, {high - 1}] of process {self.name!r} "
                    f"(vocab_size={self.vocab_size})"
                )

    def validate(self, x: Tensor) -> None:
        """Raise ValueError unless ``x`` is integer data with ids in [0, V) and length <= seq_len."""
        self._check_tokens(x, self.vocab_size, "the data")

    def validate_state(self, x_t: Tensor) -> None:
        """Like :meth:`validate` for a noisy state, whose ids lie in [0, input_vocab_size)."""
        self._check_tokens(x_t, self.input_vocab_size, "x_t")

    # --- schedule ----------------------------------------------------------------------------------
    def _time(self, t: float | Tensor, like: Tensor) -> Tensor:
        """``t`` as float64 of shape () or (B, 1) against sequences ``like`` (B, L), range-checked."""
        tt = torch.as_tensor(t, dtype=torch.float64, device=like.device)
        if tt.ndim > 0:
            if tt.ndim != 1 or (like.ndim >= 1 and tt.shape[0] != like.shape[0]):
                raise ValueError(f"t must be a scalar or have shape ({like.shape[0]},), got {tuple(tt.shape)}")
            tt = tt.reshape(-1, *([1] * (like.ndim - 1)))
        if tt.numel():
            lo, hi = float(tt.min()), float(tt.max())
            if not (self.t_min <= lo and hi <= self.t_max):
                raise ValueError(
                    f"t must lie in [{self.t_min:g}, {self.t_max:g}] for process {self.name!r} "
                    f"(schedule {self.schedule!r}), got {lo if lo < self.t_min else hi:g}"
                )
            if self.schedule == "count":
                frac = (tt - torch.round(tt)).abs()
                if float(frac.max()) > 1e-9:
                    bad = float(tt.reshape(-1)[int(torch.argmax(frac.reshape(-1)))])
                    raise ValueError(
                        f"the 'count' schedule needs integer times (t = the number of corrupted positions, "
                        f"0..{self.seq_len}), got t={bad:g}; use a number of steps that divides {self.seq_len} "
                        "or an integer grid, or a continuous schedule ('linear', 'cosine')"
                    )
                tt = torch.round(tt)
        return tt

    def rate(self, t: float | Tensor) -> Tensor:
        """m(t): the probability that a given position is corrupted at time t (count: t / seq_len)."""
        tt = torch.as_tensor(t, dtype=torch.float64)
        if self.schedule == "count":
            return tt / self.seq_len
        if self.schedule == "linear":
            return tt.clamp(0.0, 1.0)
        # 1 - cos(pi t / 2) = 2 sin^2(pi t / 4), accurate near 0 and exactly 1 at t = 1
        return torch.where(tt >= 1.0, torch.ones_like(tt), 2.0 * torch.sin(math.pi * tt.clamp(0.0, 1.0) / 4.0) ** 2)

    def rate_inverse(self, m: float | Tensor) -> Tensor:
        """The time t with m(t) = m, for m in [0, 1] (count: m seq_len, not rounded)."""
        mm = torch.as_tensor(m, dtype=torch.float64).clamp(0.0, 1.0)
        if self.schedule == "count":
            return mm * self.seq_len
        if self.schedule == "linear":
            return mm
        # inverts m = 2 sin^2(pi t / 4), accurate near 0 like rate()
        return (4.0 / math.pi) * torch.asin(torch.sqrt(mm / 2.0))

    def rate_derivative(self, t: float | Tensor) -> Tensor:
        """dm/dt (count: 1 / seq_len per unit of t)."""
        tt = torch.as_tensor(t, dtype=torch.float64)
        if self.schedule == "count":
            return torch.full_like(tt, 1.0 / self.seq_len)
        if self.schedule == "linear":
            return torch.ones_like(tt)
        return (math.pi / 2.0) * torch.sin(math.pi * tt / 2.0)

    def _corruption_mask(self, keys: Tensor, t: float | Tensor) -> Tensor:
        """Which positions F_t corrupts for ``keys`` (B, L): rank < t (count) or u < m(t)."""
        tt = self._time(t, keys)
        if self.schedule == "count":
            return key_ranks(keys) < tt
        return keys.to(torch.float64) < self.rate(tt)

    # --- the process ------------------------------------------------------------------------------
    @abstractmethod
    def corrupted(self, x_t: Tensor, x0: Tensor) -> Tensor:
        """The bool mask of corrupted positions, visible from (x_t, x0)."""

    @abstractmethod
    def _log_replacement(self) -> float:
        """log of the probability of one particular corrupted token given the original."""

    @staticmethod
    def _check_pair(x0: Tensor, x_t: Tensor) -> None:
        """x0 and x_t must be sequences of the same shape."""
        if x_t.shape != x0.shape:
            raise ValueError(f"x_t and x0 must have the same shape, got {tuple(x_t.shape)} and {tuple(x0.shape)}")

    def _sequence_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """``shape`` as a tuple, checked to be a batch of sequences of length 1..seq_len (for the prior)."""
        shape = tuple(shape)
        if not shape or not 1 <= shape[-1] <= self.seq_len:
            raise ValueError(f"process {self.name!r} draws sequences of length 1..{self.seq_len}, got shape {shape}")
        return shape

    def _draw_keys(self, corrupted: Tensor, t: float | Tensor, generator: rng.GeneratorLike) -> Tensor:
        """Keys from their law given the corrupted set C at time t (see the module docstring)."""
        v = rng.rand(corrupted.shape, generator, dtype=torch.float64, device=corrupted.device)
        if self.schedule == "count":
            return torch.where(corrupted, 0.5 * v, 0.5 + 0.5 * v)
        m = self.rate(self._time(t, corrupted)).to(corrupted.device)
        below = torch.minimum(v * m, torch.nextafter(m, torch.zeros_like(m)))
        return torch.where(corrupted, below, m + v * (1.0 - m))

    def sample_noise(
        self,
        shape: Sequence[int],
        generator: rng.GeneratorLike = None,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """eps ~ q: i.i.d. U[0, 1) keys of ``shape`` (B, L), in float64 whatever ``dtype`` (x_t is integer)."""
        return rng.rand(tuple(shape), generator, dtype=torch.float64, device=device)

    def log_kernel(self, x_t: Tensor, x0: Tensor, t: float | Tensor) -> Tensor:
        """log p(x_t | x0) exactly, one value per sequence (float64, shape (B,)).

        With k = |C| corrupted positions out of L' and r = log p(one corrupted
        token | original): count: -log C(L', t) + t r if k = min(t, L'), else
        -inf; continuous: k log m + (L' - k) log(1 - m) + k r. States whose
        uncorrupted positions disagree with x0 have probability 0.
        """
        self.validate(x0)
        self.validate_state(x_t)
        self._check_pair(x0, x_t)
        tt = self._time(t, x0).reshape(-1).to(torch.float64)
        c = self.corrupted(x_t, x0)
        k = c.sum(-1).to(torch.float64)
        n = float(x0.shape[-1])
        consistent = ((x_t == x0) | c).all(-1)
        r = self._log_replacement()
        if self.schedule == "count":
            nt = tt.clamp_max(n)
            log_choose = math.lgamma(n + 1) - torch.lgamma(nt + 1) - torch.lgamma(n - nt + 1)
            out = torch.where(k == nt, -log_choose + k * r, torch.full_like(k, -math.inf))
        else:
            m = self.rate(tt)
            out = torch.xlogy(k, m) + torch.xlogy(n - k, 1.0 - m) + k * r
        return torch.where(consistent, out, torch.full_like(out, -math.inf))

    def check_times(self, times: Tensor) -> Tensor:
        """The base checks plus, for the ``count`` schedule, integer times (a clear error before sampling)."""
        times = super().check_times(times)
        if self.schedule == "count":
            self._time(times, times)
        return times

    def output_shape(self, state_shape: Sequence[int]) -> tuple[int, ...]:
        """The network's logits: one row over the input vocabulary per position."""
        return (*tuple(state_shape), self.input_vocab_size)

    def _probs(self, logits: Tensor, width: int) -> Tensor:
        """softmax(logits[..., :width] / temperature) in float64 (a one-hot argmax at temperature 0)."""
        z = logits[..., :width].to(torch.float64)
        if self.temperature == 0.0:
            return torch.nn.functional.one_hot(z.argmax(-1), width).to(torch.float64)
        return torch.softmax(z / self.temperature, dim=-1)

    def _check_out(self, out: Tensor, x_t: Tensor) -> bool:
        """True if ``out`` is a token draw of x_t's shape, False if logits; raise otherwise."""
        if not out.is_floating_point():
            if out.shape != x_t.shape:
                raise ValueError(f"a token estimate of x0 must have x_t's shape {tuple(x_t.shape)}, got {tuple(out.shape)}")
            return True
        if out.shape[:-1] != x_t.shape or out.shape[-1] not in (self.vocab_size, self.input_vocab_size):
            raise ValueError(
                f"logits for process {self.name!r} must have shape {self.output_shape(x_t.shape)}, got {tuple(out.shape)}"
            )
        return False
