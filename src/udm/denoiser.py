"""Parameterizations of the network output and the Denoiser (THEORY §0.2, §2.1 "equivalent forms").

For a Gaussian process x_t = alpha x0 + sigma eps every common network target
is an affine function of (x_t, x0):

    target = a(t) x_t + b(t) x0,

so one pair (a, b) per parameterization gives the map to x0,
x0 = (target - a x_t) / b, and the map back. :func:`convert` goes between any
two of them through x0; round trips are exact to floating-point precision.

| name     | target                                   | a                       | b                          |
|----------|------------------------------------------|-------------------------|----------------------------|
| x0       | x0                                       | 0                       | 1                          |
| eps      | (x_t - alpha x0) / sigma                 | 1/sigma                 | -alpha/sigma               |
| score    | -eps / sigma                             | -1/sigma^2              | alpha/sigma^2              |
| v        | alpha eps - sigma x0 (Salimans & Ho)      | alpha/sigma             | -(alpha^2 + sigma^2)/sigma |
| velocity | alpha' x0 + sigma' eps (dx_t/dt)          | sigma'/sigma            | alpha' - sigma' alpha/sigma|
| edm      | F with D = c_skip x~ + c_out F(c_in x~)  | -c_skip/(alpha c_out)   | 1/c_out                    |
| pfgm     | sqrt(N) (x0 - x) / (|(x0 - x, z)| + gamma) | not affine (PFGM's normalized field, §6.2) | |

(x~ = x_t/alpha and sigma~ = sigma/alpha for ``edm``: EDM's preconditioning
applied in the variance-exploding coordinates, Karras et al. 2022, Table 1.)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .processes.base import GaussianPath, LinearPath, Process, require, time_tensor
from .registry import Registry

Tensor = torch.Tensor


class Parameterization:
    """What the network predicts, as target = a(t) x_t + b(t) x0 (see the module table)."""

    name = "x0"
    #: The scale that maps this parameterization's time input to about [0, 1000] (None: the raw t, scaled by 1000 / t_max).
    time_scale: float | None = None

    def coefficients(self, process: Process, t: Tensor) -> tuple[Tensor, Tensor]:
        """(a, b) in float64 at times ``t`` (already shaped to broadcast)."""
        return torch.zeros_like(t), torch.ones_like(t)

    def net_input(self, process: Process, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """What the network is fed: (x_t, t) unless the parameterization preconditions them."""
        return x, t.reshape(-1).to(x.dtype).expand(x.shape[0])

    def to_x0(self, pred: Tensor, x: Tensor, t: Tensor, process: Process) -> Tensor:
        """x0 from the network output: (pred - a x_t) / b (non-affine parameterizations override)."""
        a, b = self.coefficients(process, t)
        return (pred - a.to(x.dtype) * x) / b.to(x.dtype)

    def from_x0(self, x0: Tensor, x: Tensor, t: Tensor, process: Process) -> Tensor:
        """The network's target at (x_t, t) given x0: a x_t + b x0."""
        a, b = self.coefficients(process, t)
        return a.to(x.dtype) * x + b.to(x.dtype) * x0

    def config(self) -> dict:
        return {}


def _gaussian(process: Process, name: str) -> LinearPath:
    """The process if it is linear (alpha_t, sigma_t); the score additionally needs eps ~ N(0, I)."""
    if name == "score":
        return require(process, GaussianPath, "the 'score' parameterization (score = -eps/sigma holds for Gaussian noise only)")
    return require(process, LinearPath, f"the {name!r} parameterization")


class EpsParameterization(Parameterization):
    name = "eps"

    def coefficients(self, process: Process, t: Tensor) -> tuple[Tensor, Tensor]:
        p = _gaussian(process, self.name)
        a, s = p.alpha(t), p.sigma(t)
        return 1.0 / s, -a / s


class ScoreParameterization(Parameterization):
    name = "score"

    def coefficients(self, process: Process, t: Tensor) -> tuple[Tensor, Tensor]:
        p = _gaussian(process, self.name)
        a, s = p.alpha(t), p.sigma(t)
        return -1.0 / s**2, a / s**2


class VParameterization(Parameterization):
    name = "v"

    def coefficients(self, process: Process, t: Tensor) -> tuple[Tensor, Tensor]:
        p = _gaussian(process, self.name)
        a, s = p.alpha(t), p.sigma(t)
        return a / s, -(a * a + s * s) / s


class VelocityParameterization(Parameterization):
    name = "velocity"

    def coefficients(self, process: Process, t: Tensor) -> tuple[Tensor, Tensor]:
        p = _gaussian(process, self.name)
        a, s, da, ds = p.alpha(t), p.sigma(t), p.dalpha(t), p.dsigma(t)
        return ds / s, da - ds * a / s


class EDMParameterization(Parameterization):
    """EDM preconditioning with data standard deviation ``sigma_data`` (Karras et al. 2022, eq. 7)."""

    name = "edm"
    time_scale = 250.0  # c_noise = log(sigma~)/4 spans about [-1.6, 1.1]

    def __init__(self, sigma_data: float = 0.5) -> None:
        self.sigma_data = float(sigma_data)

    def _c(self, process: Process, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        p = _gaussian(process, self.name)
        a = p.alpha(t)
        st = p.sigma(t) / a
        sd2 = self.sigma_data**2
        c_skip = sd2 / (st**2 + sd2)
        c_out = st * self.sigma_data / torch.sqrt(st**2 + sd2)
        c_in = 1.0 / torch.sqrt(st**2 + sd2)
        return a, st, c_skip, c_out, c_in

    def coefficients(self, process: Process, t: Tensor) -> tuple[Tensor, Tensor]:
        a, _, c_skip, c_out, _ = self._c(process, t)
        return -c_skip / (a * c_out), 1.0 / c_out

    def net_input(self, process: Process, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        a, st, _, _, c_in = self._c(process, t)
        c_noise = 0.25 * torch.log(st)
        return (c_in / a).to(x.dtype) * x, c_noise.reshape(-1).to(x.dtype).expand(x.shape[0])

    def config(self) -> dict:
        return {"sigma_data": self.sigma_data}


class PFGMParameterization(Parameterization):
    """PFGM's normalized field (THEORY §6.2, P2): the network predicts the x-part of v = sqrt(N) E / (|E| + gamma).

    For a process with alpha = 1 and sigma = z, the field points from (x, z) to the
    posterior mean: E = (x0 - x, -z) (the empirical field of P2 is this with x0 the
    batch posterior mean). The network outputs v_x = sqrt(N) (x0 - x) / (|E| + gamma);
    the z-part is fixed by the normalization, which is how the paper's own sampler
    recovers f_z near the data (App. B.2.3). The map is not affine: with
    q = |v_x| / sqrt(N) and n = |x0 - x|, q (sqrt(n^2 + z^2) + gamma) = n gives
    n = q (gamma + sqrt(q^2 gamma^2 + (1 - q^2) z^2)) / (1 - q^2).

    The network sees x / sqrt(z^2 + sigma_data^2) and log(z) / 4 (EDM-style
    preconditioning; the paper feeds raw (x, z)).
    """

    name = "pfgm"
    time_scale = 250.0  # log(z)/4, as EDM's c_noise

    def __init__(self, gamma: float = 0.0, sigma_data: float = 0.5) -> None:
        if gamma < 0:
            raise ValueError(f"pfgm parameterization: gamma must be >= 0, got {gamma}")
        self.gamma, self.sigma_data = float(gamma), float(sigma_data)

    def _z(self, process: Process, t: Tensor) -> Tensor:
        p = require(process, LinearPath, "the 'pfgm' parameterization")
        if not bool((p.alpha(t) == 1).all()):
            raise ValueError(f"the 'pfgm' parameterization needs alpha_t = 1 (z = sigma_t), as in PFGM; process {process.name!r} has alpha != 1")
        return p.sigma(t)

    def coefficients(self, process: Process, t: Tensor) -> tuple[Tensor, Tensor]:
        raise ValueError("the 'pfgm' parameterization is not affine in (x_t, x0); loss weightings other than 'target' do not apply")

    def net_input(self, process: Process, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        z = self._z(process, t)
        c_in = 1.0 / torch.sqrt(z**2 + self.sigma_data**2)
        return c_in.to(x.dtype) * x, (0.25 * torch.log(z)).reshape(-1).to(x.dtype).expand(x.shape[0])

    def from_x0(self, x0: Tensor, x: Tensor, t: Tensor, process: Process) -> Tensor:
        z = self._z(process, t).to(torch.float64).reshape(-1, *([1] * (x.ndim - 1)))
        a = (x0 - x).to(torch.float64)
        n_dim = a[0].numel()
        norm_e = torch.sqrt((a**2).flatten(1).sum(1).reshape(-1, *([1] * (x.ndim - 1))) + z**2)
        return (math.sqrt(n_dim) * a / (norm_e + self.gamma)).to(x.dtype)

    def to_x0(self, pred: Tensor, x: Tensor, t: Tensor, process: Process) -> Tensor:
        z = self._z(process, t).to(torch.float64).reshape(-1, *([1] * (x.ndim - 1)))
        v = pred.to(torch.float64)
        n_dim = v[0].numel()
        v_norm = v.flatten(1).norm(dim=1).reshape(-1, *([1] * (x.ndim - 1)))
        q = (v_norm / math.sqrt(n_dim)).clamp(max=1.0 - 1e-12)
        g = self.gamma
        n = q * (g + torch.sqrt(q**2 * g**2 + (1.0 - q**2) * z**2)) / (1.0 - q**2)
        return (x.to(torch.float64) + n * v / v_norm.clamp_min(1e-300)).to(x.dtype)

    def config(self) -> dict:
        return {"gamma": self.gamma, "sigma_data": self.sigma_data}


class LogitsParameterization(Parameterization):
    """The network outputs the logits of a categorical q(x0 | x_t) (THEORY §3.1, discrete data; §4.3-§4.5).

    There is no affine map to x0 here: :class:`TokenDenoiser` returns the logits
    and the process's ``estimate_x0`` draws x0_hat from them.
    """

    name = "logits"

    def coefficients(self, process: Process, t: Tensor) -> tuple[Tensor, Tensor]:
        raise ValueError(
            "the 'logits' prediction is a distribution over tokens, not an affine function of x_t; "
            "use a TokenDenoiser and a discrete process (mask, edit, encoder)"
        )


PARAMETERIZATIONS: Registry[Callable[..., Parameterization]] = Registry("parameterization")
for _cls in (
    Parameterization,
    EpsParameterization,
    ScoreParameterization,
    VParameterization,
    VelocityParameterization,
    EDMParameterization,
    PFGMParameterization,
    LogitsParameterization,
):
    PARAMETERIZATIONS.register(_cls.name, _cls)


def get_parameterization(prediction: str | Parameterization, **kwargs) -> Parameterization:
    """A parameterization object from its registry name (or pass one through)."""
    if isinstance(prediction, Parameterization):
        return prediction
    return PARAMETERIZATIONS.get(prediction)(**kwargs)


def to_x0(pred: Tensor, x: Tensor, t: float | Tensor, process: Process, prediction: str | Parameterization) -> Tensor:
    """x0 = (pred - a x_t) / b for a network output ``pred`` in parameterization ``prediction``."""
    return get_parameterization(prediction).to_x0(pred, x, time_tensor(t, x), process)


def from_x0(x0: Tensor, x: Tensor, t: float | Tensor, process: Process, prediction: str | Parameterization) -> Tensor:
    """target = a x_t + b x0: the quantity ``prediction`` at (x_t, t) given x0."""
    return get_parameterization(prediction).from_x0(x0, x, time_tensor(t, x), process)


def convert(
    pred: Tensor,
    x: Tensor,
    t: float | Tensor,
    process: Process,
    src: str | Parameterization,
    dst: str | Parameterization,
) -> Tensor:
    """Convert a prediction from parameterization ``src`` to ``dst`` (through x0; THEORY §2.1)."""
    return from_x0(to_x0(pred, x, t, process, src), x, t, process, dst)


class Denoiser(nn.Module):
    """x0_hat(x_t, t, cond) from a network and a parameterization (DESIGN: the Denoiser noun).

    ``net(x_in, t_in)`` (or ``net(x_in, t_in, cond)`` when a condition is given)
    returns the parameterization's target; :meth:`forward` converts it to x0_hat,
    and :meth:`predict` to any other parameterization (eps, score, velocity, ...),
    so samplers never re-derive these conversions.
    """

    def __init__(
        self, net: Callable[..., Tensor], process: Process, prediction: str | Parameterization = "eps", **prediction_kwargs
    ) -> None:
        super().__init__()
        self.net = net
        self.process = process
        self.parameterization = get_parameterization(prediction, **prediction_kwargs)
        if isinstance(self.parameterization, LogitsParameterization):
            raise ValueError("the 'logits' prediction is a distribution over tokens: use TokenDenoiser (make_denoiser picks it)")

    @property
    def prediction(self) -> str:
        """The registry name of the network's parameterization."""
        return self.parameterization.name

    def raw(self, x: Tensor, t: float | Tensor, cond: object = None) -> Tensor:
        """The network output (in its own parameterization) at (x_t, t)."""
        tt = time_tensor(t, x)
        if tt.ndim == 0:
            tt = tt.expand(x.shape[0]).reshape(-1, *([1] * (x.ndim - 1)))
        x_in, t_in = self.parameterization.net_input(self.process, x, tt)
        out = self.net(x_in, t_in) if cond is None else self.net(x_in, t_in, cond)
        if not isinstance(out, Tensor) or out.shape != x.shape:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"denoiser network output has shape {shape} but x_t has shape {tuple(x.shape)}; they must match")
        return out

    def forward(self, x: Tensor, t: float | Tensor, cond: object = None) -> Tensor:
        """x0_hat(x_t, t)."""
        return to_x0(self.raw(x, t, cond), x, t, self.process, self.parameterization)

    def predict(self, x: Tensor, t: float | Tensor, kind: str = "x0", cond: object = None) -> Tensor:
        """The network's estimate expressed as ``kind`` (x0, eps, score, v, velocity, edm)."""
        return convert(self.raw(x, t, cond), x, t, self.process, self.parameterization, kind)


class TokenDenoiser(nn.Module):
    """Logits of q(x0 | x_t, t) for processes over tokens (THEORY §3.1 "discrete data", §4.3-§4.5).

    ``net(x_t, t[, cond])`` returns logits of shape ``process.output_shape(x_t.shape)``
    (a vocabulary axis after the positions); the sampler turns them into x0_hat
    with ``process.estimate_x0``. Time reaches the network as raw t, like the
    ``x0`` parameterization of :class:`Denoiser`.
    """

    parameterization = LogitsParameterization()
    prediction = "logits"

    def __init__(self, net: Callable[..., Tensor], process: Process) -> None:
        super().__init__()
        self.net = net
        self.process = process

    def raw(self, x: Tensor, t: float | Tensor, cond: object = None) -> Tensor:
        """The logits at (x_t, t), shape checked against the process."""
        tt = torch.as_tensor(t, dtype=torch.float64, device=x.device).reshape(-1)
        t_in = tt.to(torch.float32).expand(x.shape[0]) if tt.numel() == 1 else tt.to(torch.float32)
        out = self.net(x, t_in) if cond is None else self.net(x, t_in, cond)
        expected = self.process.output_shape(x.shape)
        if not isinstance(out, Tensor) or tuple(out.shape) != tuple(expected):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"the network returned shape {shape} for x_t of shape {tuple(x.shape)}, but process "
                f"{self.process.name!r} needs logits of shape {tuple(expected)} (set the network's vocab_size to match)"
            )
        return out

    def forward(self, x: Tensor, t: float | Tensor, cond: object = None) -> Tensor:
        """Logits of q(x0 | x_t, t)."""
        return self.raw(x, t, cond)


def make_denoiser(net: Callable[..., Tensor], process: Process, prediction: str | Parameterization, **kwargs) -> nn.Module:
    """A :class:`TokenDenoiser` for the ``logits`` prediction, else a :class:`Denoiser`."""
    if get_parameterization(prediction, **kwargs).name == LogitsParameterization.name:
        return TokenDenoiser(net, process)
    return Denoiser(net, process, prediction, **kwargs)
