"""The Process protocol (THEORY §3.1): a forward corruption x_t = F_t(x0, eps), eps ~ q.

A process only has to say how to corrupt (``corrupt``), optionally how to
recover the noise (``recover_noise`` = F_t^{-1}), how to draw q (``sample_noise``)
and the prior at ``t_max`` (``prior``). The reverse kernels K0/K1/K2 in
:mod:`udm.kernels` are written once against this protocol, so every process
gets them for free.

Three hooks let non-Gaussian processes use the same samplers and losses
(THEORY §3.2, U2), each with a default that is right for continuous data:

* ``estimate_x0(out, x_t, t)`` turns the denoiser's output into the x0_hat the
  kernel is evaluated at (U2 step 2.1): the posterior mean itself by default,
  a token draw from the logits for discrete processes;
* ``finish(x, x0_hat)`` is what a sampler returns after its last step: x_0 by
  default, x0_hat for the encoder model (THEORY §4.5);
* ``state_shape(data_shape)`` is the shape of x_t for data of ``data_shape``
  (the same by default; a latent shape for the encoder model), and
  ``output_shape(state_shape)`` the shape of the denoiser's output (logits add
  a vocabulary axis).

``prior`` and ``sample_noise`` take *state* shapes. ``recover_noise`` receives
the sampler's generator: for discrete processes F_t^{-1} is a conditional law
(which positions were corrupted is visible, their order is not), so the
recovered noise is a draw from it.

Time conventions, shared by all processes: ``t_min`` is the clean-data end
(x_{t_min} = x0), ``t_max`` the prior end, and ``t_eps`` the smallest positive
time a default grid visits before its final step to ``t_min``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

from .. import rng


class NotInvertible(ValueError):
    """Raised by ``recover_noise`` when F_t has no inverse in eps (K1/K2 then do not apply)."""


def time_tensor(t: float | torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
    """``t`` as a float64 tensor; with ``x``, shaped (B, 1, ..., 1) to broadcast against it.

    All schedule arithmetic is done in float64 whatever the network's dtype
    (issue: reproducibility and precision); only the final coefficients are
    cast to ``x.dtype``.
    """
    device = None if x is None else x.device
    t = torch.as_tensor(t, dtype=torch.float64, device=device)
    if x is None or t.ndim == 0:
        return t
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"t must be a scalar or have shape ({x.shape[0]},) to match x, got {tuple(t.shape)}")
    return t.reshape(-1, *([1] * (x.ndim - 1)))


class Process(ABC):
    """A forward process F_t(x0, eps) with noise law q and a prior at ``t_max``."""

    name: str = "process"
    t_min: float = 0.0
    t_max: float = 1.0
    t_eps: float = 1e-3
    #: True when q = N(0, I): the Gaussian-mixing kernel K2 requires it.
    noise_is_standard_normal: bool = True
    #: True when t only takes the integers t_min..t_max (cold processes, counted corruptions):
    #: the uniform time sampler then draws integers.
    integer_times: bool = False

    @abstractmethod
    def corrupt(self, x0: torch.Tensor, t: float | torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_t = F_t(x0, eps)."""

    def recover_noise(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: float | torch.Tensor, *, generator: rng.GeneratorLike = None
    ) -> torch.Tensor:
        """eps = F_t^{-1}(x0, x_t); raises :class:`NotInvertible` where F_t cannot be inverted."""
        raise NotInvertible(
            f"process {self.name!r} cannot recover the noise from (x0, x_t): F_t is not invertible in eps; "
            "use the re-noising kernel K0 instead of K1/K2"
        )

    def sample_noise(
        self,
        shape: Sequence[int],
        generator: rng.GeneratorLike = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Draw eps ~ q (standard normal unless a process says otherwise)."""
        return rng.randn(shape, generator, dtype=dtype, device=device)

    @abstractmethod
    def prior(
        self,
        shape: Sequence[int],
        generator: rng.GeneratorLike = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Draw x_T from the prior at ``t_max`` (THEORY §3.2, U2 step 1)."""

    def estimate_x0(
        self, out: torch.Tensor, x_t: torch.Tensor, t: float | torch.Tensor, *, generator: rng.GeneratorLike = None
    ) -> torch.Tensor:
        """x0_hat from the denoiser output ``out`` (THEORY §3.2 U2 step 2.1): the output itself by default."""
        return out

    def finish(self, x: torch.Tensor, x0_hat: torch.Tensor | None) -> torch.Tensor:
        """What a sampler returns after its last step: the final state x_0 by default."""
        return x

    def state_shape(self, data_shape: Sequence[int]) -> tuple[int, ...]:
        """The shape of x_t for a batch of data of shape ``data_shape`` (the same unless the process encodes)."""
        return tuple(data_shape)

    def output_shape(self, state_shape: Sequence[int]) -> tuple[int, ...]:
        """The shape the denoiser returns for x_t of shape ``state_shape`` (x0_hat: the same by default)."""
        return tuple(state_shape)

    def default_grid(self, steps: int) -> torch.Tensor:
        """The time grid samplers use when none is given: ``steps + 1`` decreasing times."""
        from ..samplers.grids import get_grid

        return get_grid(self.default_grid_name, self, steps)

    default_grid_name: str = "uniform"

    def check_times(self, times: torch.Tensor) -> torch.Tensor:
        """Validate a sampler's time grid: 1-D, at least two points, strictly decreasing, inside the domain."""
        times = torch.as_tensor(times, dtype=torch.float64, device="cpu")
        if times.ndim != 1 or times.numel() < 2:
            raise ValueError(f"a time grid needs at least two times (start and end), got shape {tuple(times.shape)}")
        if not torch.isfinite(times).all():
            raise ValueError("the time grid contains NaN or inf")
        if not (times[1:] < times[:-1]).all():
            bad = int(torch.nonzero(times[1:] >= times[:-1])[0]) + 1
            raise ValueError(
                f"the time grid must be strictly decreasing (from noise to data); "
                f"times[{bad - 1}]={float(times[bad - 1]):g} <= times[{bad}]={float(times[bad]):g}"
            )
        lo, hi = float(times.min()), float(times.max())
        tol = 1e-9 * max(1.0, abs(self.t_max))
        if lo < self.t_min - tol or hi > self.t_max + tol:
            raise ValueError(
                f"the time grid leaves the domain of process {self.name!r}: it spans [{lo:g}, {hi:g}] "
                f"but t must lie in [{self.t_min:g}, {self.t_max:g}]"
            )
        return times

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, t in [{self.t_min:g}, {self.t_max:g}])"
