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

Conditioning on observed data y (inpainting, :mod:`udm.conditioning`) asks
one more hook, ``observe(y, t)``: the observed part as it looks at time t,
F_t(y, eps) with fresh eps ~ q by default; token processes keep observed
tokens as they are (infill). A projected state can then be one that F_t never
produces (a mask state on the ``count`` schedule holds fewer than t masks), so
the denoiser is evaluated at ``state_time(x_t, t)``: t by default, the time the
state itself shows where a process can read it off the state.

Three more hooks, with defaults, are all the assembly layer (``udm.training``)
asks of a process: ``fit(x, seed=...)`` (options learned from the training
data), ``bind(net)`` (the process to use with a given network) and
``network_options()`` (options the process dictates to its network).

What only some processes can do is declared as a capability, a
``typing.Protocol`` below (:class:`LinearPath`, :class:`GaussianPath`,
:class:`TokenProcess`, :class:`ELBOWeighted`, :class:`FieldPerturbation`,
:class:`KernelDensity`, :class:`ForwardTransition`); code that needs one calls :func:`require` once,
which returns the process or raises one clear error.

Time conventions, shared by all processes: ``t_min`` is the clean-data end
(x_{t_min} = x0), ``t_max`` the prior end, and ``t_eps`` the smallest positive
time a default grid visits before its final step to ``t_min``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import torch
from torch import nn

from .. import rng

if TYPE_CHECKING:
    from .noise import NoiseLaw


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

    def observe(self, y: torch.Tensor, t: float | torch.Tensor, *, generator: rng.GeneratorLike = None) -> torch.Tensor:
        """Observed data ``y`` (a batch) as it looks at time t: F_t(y, eps) with fresh eps ~ q, a state.

        What replacement inpainting writes into the observed coordinates after
        every reverse step (:mod:`udm.conditioning`); at the clean end it is y itself.
        """
        eps = self.sample_noise(self.state_shape(y.shape), generator, dtype=y.dtype, device=y.device)
        return self.corrupt(y, t, eps)

    def state_time(self, x_t: torch.Tensor, t: float) -> float | torch.Tensor:
        """The time at which the denoiser sees the state ``x_t`` that a sampler reached at grid time t: t by default.

        Samplers evaluate the denoiser at this time (``udm.sample``). It differs
        from t only where the state shows its own time and a projection
        (:mod:`udm.conditioning`) has moved it off the grid: then a per-sample
        float64 tensor of shape (B,).
        """
        return t

    def state_shape(self, data_shape: Sequence[int]) -> tuple[int, ...]:
        """The shape of x_t for a batch of data of shape ``data_shape`` (the same unless the process encodes)."""
        return tuple(data_shape)

    def output_shape(self, state_shape: Sequence[int]) -> tuple[int, ...]:
        """The shape the denoiser returns for x_t of shape ``state_shape`` (x0_hat: the same by default)."""
        return tuple(state_shape)

    #: The registered grid (``udm.samplers.get_grid``) samplers use when none is given.
    default_grid_name: str = "uniform"

    # --- assembly hooks: what the experiment layer asks of any process, with defaults ----------
    def fit(self, x: torch.Tensor, *, seed: int) -> dict[str, Any]:
        """Options learned from the training data ``x``, to record in the config so a checkpoint rebuilds the process.

        Nothing to learn by default; the cold processes fit their generation
        prior (THEORY §4.2) and PFGM its perturbation range (THEORY §6.2) here,
        returning ``{}`` once those are given.
        """
        return {}

    def bind(self, net: nn.Module) -> Process:
        """The process to use with the network ``net``: this one by default (the encoder model binds F, THEORY §4.5)."""
        return self

    def network_options(self) -> dict[str, Any]:
        """Options this process dictates to its denoising network (filled in where the config leaves them out).

        None by default; token processes give the vocabulary the network embeds,
        the encoder model also the latent size.
        """
        return {}

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


class TokenProcessBase(Process):
    """Defaults for processes over token ids x0 in [0, vocab_size): with them a process is a :class:`TokenProcess`.

    The network embeds ``input_vocab_size`` ids (the data's by default; the mask
    process adds [MASK]) and the cross-entropy counts every position unless
    ``loss_positions`` says otherwise (THEORY §4.3-§4.5).
    """

    vocab_size: int

    @property
    def input_vocab_size(self) -> int:
        """How many ids the network embeds: the data vocabulary by default."""
        return self.vocab_size

    def loss_positions(self, x_t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Where the cross-entropy counts, a bool mask of x0's shape: every position by default."""
        return torch.ones(x0.shape, dtype=torch.bool, device=x0.device)

    def network_options(self) -> dict[str, Any]:
        """The network embeds ``input_vocab_size`` ids."""
        return {"vocab_size": self.input_vocab_size}

    def observe(self, y: torch.Tensor, t: float | torch.Tensor, *, generator: rng.GeneratorLike = None) -> torch.Tensor:
        """Observed tokens stay as they are at every time (infill): conditioning keeps them fixed."""
        return y


# --- declared capabilities ----------------------------------------------------------------------


@runtime_checkable
class LinearPath(Protocol):
    """x_t = alpha_t x0 + sigma_t eps with eps ~ ``noise``, any law (THEORY §4.1, §7.4, §8.1).

    Coefficients take a float or tensor time and return float64 tensors.
    ``sigma_tilde`` = sigma/alpha is the noise level of x_t / alpha_t (THEORY §5.2).
    """

    name: str
    noise: NoiseLaw

    def alpha(self, t: float | torch.Tensor) -> torch.Tensor: ...

    def sigma(self, t: float | torch.Tensor) -> torch.Tensor: ...

    def dalpha(self, t: float | torch.Tensor) -> torch.Tensor: ...

    def dsigma(self, t: float | torch.Tensor) -> torch.Tensor: ...

    def log_snr(self, t: float | torch.Tensor) -> torch.Tensor: ...

    def t_from_log_snr(self, log_snr: float | torch.Tensor) -> torch.Tensor: ...

    def dlog_snr(self, t: float | torch.Tensor) -> torch.Tensor: ...

    def sigma_tilde(self, t: float | torch.Tensor) -> torch.Tensor: ...

    def t_from_sigma_tilde(self, sigma_tilde: float | torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class GaussianPath(LinearPath, Protocol):
    """A linear path with eps ~ N(0, I): the forward SDE and the DDPM posterior exist (THEORY §4.1, §9.3).

    :func:`require` also checks ``noise_is_standard_normal``.
    """

    noise_is_standard_normal: bool

    def sde(self, t: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def posterior(
        self, x_t: torch.Tensor, x0: torch.Tensor, t: float | torch.Tensor, s: float | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


@runtime_checkable
class TokenProcess(Protocol):
    """A process over token ids whose denoiser returns logits (THEORY §4.3-§4.5); see :class:`TokenProcessBase`."""

    name: str
    vocab_size: int
    input_vocab_size: int

    def loss_positions(self, x_t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class ELBOWeighted(Protocol):
    """A process whose cross-entropy, weighted by ``elbo_weight(t)``, bounds -log p(x0) (THEORY §4.4)."""

    name: str

    def elbo_weight(self, t: float | torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class FieldPerturbation(Protocol):
    """PFGM's perturbation P1: ``perturb(x0, generator) -> (z, eps)`` (THEORY §6.2)."""

    name: str

    def perturb(self, x0: torch.Tensor, generator: rng.GeneratorLike = None) -> tuple[torch.Tensor, torch.Tensor]: ...


@runtime_checkable
class KernelDensity(Protocol):
    """A process with the exact transition density ``log_kernel(x_t, x0, t)`` = log p_t(x_t | x0) (THEORY §8.1)."""

    name: str

    def log_kernel(self, x_t: torch.Tensor, x0: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class ForwardTransition(Protocol):
    """A Markov forward process: ``transition(x_s, s, t)`` draws x_t ~ q(x_t | x_s) for s < t (RePaint's jump back up).

    Its marginals must be F_t's: x_s ~ p_s gives x_t ~ p_t.
    """

    name: str

    def transition(
        self, x_s: torch.Tensor, s: float | torch.Tensor, t: float | torch.Tensor, *, generator: rng.GeneratorLike = None
    ) -> torch.Tensor: ...


#: What each capability's error says is missing: ``{what}`` needed it, ``{name}`` is the process.
REQUIREMENTS: dict[type, str] = {
    LinearPath: "{what} needs a linear process (x_t = alpha x0 + sigma eps), got {name!r}",
    GaussianPath: "{what} needs Gaussian noise eps ~ N(0, I), but process {name!r} draws eps from {noise!r}",
    TokenProcess: "{what} needs a token process (vocab_size, input_vocab_size, loss_positions), got process {name!r}",
    ELBOWeighted: "{what} needs a process with an ELBO weight (elbo_weight(t), e.g. 'mask'), got process {name!r}",
    FieldPerturbation: "{what} needs PFGM's perturbation (process 'pfgm'), got process {name!r}",
    KernelDensity: "{what} needs a process with an exact transition density (log_kernel), got process {name!r}",
    ForwardTransition: "{what} needs a Markov forward transition q(x_t | x_s) (e.g. a Gaussian process), got process {name!r}",
}

C = TypeVar("C")


def require(process: Process, capability: type[C], what: str, hint: str = "") -> C:
    """``process`` if it has ``capability`` (one of :data:`REQUIREMENTS`), else a ValueError naming ``what`` needed it.

    A :class:`GaussianPath` must first be a :class:`LinearPath` (that error comes
    first) and draw eps ~ N(0, I) (``noise_is_standard_normal``). ``hint``, if
    given, is appended to the message.
    """
    if capability not in REQUIREMENTS:
        raise TypeError(f"unknown capability {capability!r}; known: {', '.join(c.__name__ for c in REQUIREMENTS)}")
    gaussian = capability is GaussianPath
    if gaussian:
        require(process, LinearPath, what, hint)
    if not (isinstance(process, capability) and (not gaussian or process.noise_is_standard_normal)):
        noise = process.noise if gaussian else None
        message = REQUIREMENTS[capability].format(what=what, name=process.name, noise=noise)
        raise ValueError(message + (f"; {hint}" if hint else ""))
    return process
