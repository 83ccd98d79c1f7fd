"""Noise laws q(eps) for linear processes x_t = alpha_t x0 + sigma_t eps (THEORY §7, §8).

The Gaussian family draws eps ~ N(0, I). Nothing in the ODE construction
needs that: for a linear path the conditional velocity is
f_t(x | x0) = alpha' x0 + sigma' eps (THEORY §8.1, worked example 2), so the
marginal velocity is alpha' E[x0 | x_t] + sigma' E[eps | x_t] whatever the law
of eps, and every deterministic sampler written on (alpha, sigma, x0_hat) works
unchanged. What the law changes is the kernel p_t(x | x0) =
q((x - alpha x0) / sigma) / sigma^d, the posterior E[x0 | x_t] the network
learns, and the prior sigma_T eps.

Laws (``NOISES`` names them):

* ``gaussian``: N(0, I);
* ``uniform``: uniform on the box [low, high]^d (THEORY §8.1: any easy prior);
* ``laplace``: i.i.d. Laplace(0, b) coordinates;
* ``student_t``: the isotropic multivariate Student-t with D degrees of
  freedom over the whole sample, the PFGM++ kernel in EDM's clock
  (THEORY §7.4): eps = sqrt(D) R u, R^2 = b / (1 - b), b ~ Beta(N/2, D/2),
  u uniform on the unit sphere of R^N. D = 1 is the gravity / Cauchy kernel of
  PFGM (§6.1, §7.1 solution A); D -> inf is N(0, I);
* ``radial``: eps = rho u with |eps| = rho drawn from a user 1-D CDF Psi by a
  numeric inverse (THEORY §7.1, CDF construction: psi_t(r) = Psi(r / t)).

All laws are isotropic or coordinate-wise, so they are defined for any state
shape; ``log_prob`` sums over all but the batch dimension.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .. import rng
from ..numerics import inverse_cdf
from ..registry import Registry

Tensor = torch.Tensor


def unit_sphere(shape: Sequence[int], generator: rng.GeneratorLike, dtype: torch.dtype, device) -> Tensor:
    """Directions u uniform on the unit sphere of R^N, N = prod(shape[1:]), one per batch row."""
    g = rng.randn(shape, generator, dtype=torch.float64, device=device)
    return (g / g.flatten(1).norm(dim=1).reshape(-1, *([1] * (g.ndim - 1)))).to(dtype)


def log_sphere_area(n: int) -> float:
    """log S_N(1), the area of the unit sphere in R^N: S_N = 2 pi^(N/2) / Gamma(N/2)."""
    return math.log(2.0) + 0.5 * n * math.log(math.pi) - math.lgamma(0.5 * n)


class NoiseLaw:
    """A law q(eps) on the state space: draws and log-density."""

    name = "noise"
    #: True for N(0, I), the law the Gaussian-only kernels and samplers need.
    is_standard_normal = False

    def sample(
        self, shape: Sequence[int], generator: rng.GeneratorLike = None, *, dtype: torch.dtype = torch.float32, device=None
    ) -> Tensor:
        """Draw eps of the full batch shape ``shape``."""
        raise NotImplementedError

    def log_prob(self, eps: Tensor) -> Tensor:
        """log q(eps) per sample (summed over all but the batch dimension), float64."""
        raise NotImplementedError

    def config(self) -> dict:
        """Constructor arguments (for configs and ``repr``)."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


class GaussianNoise(NoiseLaw):
    """eps ~ N(0, I)."""

    name = "gaussian"
    is_standard_normal = True

    def sample(self, shape, generator=None, *, dtype=torch.float32, device=None) -> Tensor:
        return rng.randn(shape, generator, dtype=dtype, device=device)

    def log_prob(self, eps: Tensor) -> Tensor:
        e = eps.to(torch.float64).flatten(1)
        return -0.5 * (e**2).sum(1) - 0.5 * e.shape[1] * math.log(2 * math.pi)


class UniformNoise(NoiseLaw):
    """eps uniform on the box [low, high]^N; the default [-sqrt 3, sqrt 3] has unit variance like N(0, I)."""

    name = "uniform"

    def __init__(self, low: float = -math.sqrt(3.0), high: float = math.sqrt(3.0)) -> None:
        if not high > low:
            raise ValueError(f"uniform noise needs high > low, got low={low}, high={high}")
        self.low, self.high = float(low), float(high)

    def sample(self, shape, generator=None, *, dtype=torch.float32, device=None) -> Tensor:
        u = rng.rand(shape, generator, dtype=torch.float64, device=device)
        return (self.low + (self.high - self.low) * u).to(dtype)

    def log_prob(self, eps: Tensor) -> Tensor:
        e = eps.to(torch.float64).flatten(1)
        inside = ((e >= self.low) & (e <= self.high)).all(1)
        value = -e.shape[1] * math.log(self.high - self.low)
        return torch.where(inside, torch.full_like(e[:, 0], value), torch.full_like(e[:, 0], -math.inf))

    def config(self) -> dict:
        return {"low": self.low, "high": self.high}


class LaplaceNoise(NoiseLaw):
    """i.i.d. Laplace(0, scale) coordinates; the default scale 1/sqrt 2 has unit variance."""

    name = "laplace"

    def __init__(self, scale: float = 1.0 / math.sqrt(2.0)) -> None:
        if not scale > 0:
            raise ValueError(f"laplace noise needs scale > 0, got {scale}")
        self.scale = float(scale)

    def sample(self, shape, generator=None, *, dtype=torch.float32, device=None) -> Tensor:
        u = rng.rand(shape, generator, dtype=torch.float64, device=device) - 0.5
        return (-self.scale * torch.sign(u) * torch.log1p(-2.0 * u.abs())).to(dtype)

    def log_prob(self, eps: Tensor) -> Tensor:
        e = eps.to(torch.float64).flatten(1)
        return -e.abs().sum(1) / self.scale - e.shape[1] * math.log(2.0 * self.scale)

    def config(self) -> dict:
        return {"scale": self.scale}


class RadialNoise(NoiseLaw):
    """Isotropic eps = rho u: the radius from the law with CDF ``radius_cdf`` and u uniform on the sphere.

    log q(eps) = log rho'(|eps|) - log S_N - (N - 1) log |eps| with rho' the radius
    density (THEORY §7.1: p_t(x | x0) = d_r psi_t / (S_d r^(d-1))). Subclasses give the
    radius law; :class:`CDFNoise` takes any CDF and inverts it numerically.
    """

    def radius(self, n_dim: int, u: Tensor) -> Tensor:
        """The radius at quantile ``u`` (float64) in dimension ``n_dim``."""
        raise NotImplementedError

    def log_radius_density(self, n_dim: int, rho: Tensor) -> Tensor:
        """log of the radius density at ``rho`` in dimension ``n_dim``."""
        raise NotImplementedError

    def sample(self, shape, generator=None, *, dtype=torch.float32, device=None) -> Tensor:
        shape = tuple(shape)
        n_dim = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        u = rng.rand((shape[0],), generator, dtype=torch.float64, device=device)
        rho = self.radius(n_dim, u).to(device=u.device)
        direction = unit_sphere(shape, generator, torch.float64, device)
        return (rho.reshape(-1, *([1] * (len(shape) - 1))) * direction).to(dtype)

    def log_prob(self, eps: Tensor) -> Tensor:
        e = eps.to(torch.float64).flatten(1)
        n_dim = e.shape[1]
        rho = e.norm(dim=1)
        return self.log_radius_density(n_dim, rho) - log_sphere_area(n_dim) - (n_dim - 1) * torch.log(rho)


class StudentTNoise(RadialNoise):
    """Multivariate Student-t with D degrees of freedom and unit scale: the PFGM++ kernel (THEORY §7.4).

    Density proportional to (1 + |eps|^2 / D)^(-(N + D)/2). The radius is drawn as
    PFGM++ does: |eps| = sqrt(D b / (1 - b)) with b ~ Beta(N/2, D/2) (a Beta-prime
    radius), here by the exact inverse Beta CDF so that one uniform per sample
    gives it. ``clip`` (e.g. 1e-3) clips b to [clip, 1 - clip] as the PFGM++ code
    does; the default None keeps the law exact. D = 1 is PFGM's gravity kernel.
    """

    name = "student_t"

    def __init__(self, D: float = 128.0, clip: float | None = None) -> None:
        if not D > 0:
            raise ValueError(f"student_t noise needs D > 0 extra dimensions, got {D}")
        if clip is not None and not 0.0 < clip < 0.5:
            raise ValueError(f"student_t noise: clip must be in (0, 0.5), got {clip}")
        self.D, self.clip = float(D), clip

    def beta(self, n_dim: int, u: Tensor) -> Tensor:
        """b = I^{-1}_u(N/2, D/2), the Beta(N/2, D/2) quantile (clipped if asked)."""
        from scipy.special import betaincinv

        b = torch.from_numpy(betaincinv(0.5 * n_dim, 0.5 * self.D, u.detach().cpu().numpy().astype(np.float64)))
        return b.clamp(self.clip, 1.0 - self.clip) if self.clip is not None else b

    def radius(self, n_dim: int, u: Tensor) -> Tensor:
        b = self.beta(n_dim, u)
        return torch.sqrt(self.D * b / (1.0 - b))

    def log_prob(self, eps: Tensor) -> Tensor:
        e = eps.to(torch.float64).flatten(1)
        n, d = e.shape[1], self.D
        norm = math.lgamma(0.5 * (d + n)) - math.lgamma(0.5 * d) - 0.5 * n * math.log(d * math.pi)
        return norm - 0.5 * (d + n) * torch.log1p((e**2).sum(1) / d)

    def config(self) -> dict:
        return {"D": self.D, "clip": self.clip}


def one_minus_exp(z: Tensor) -> Tensor:
    """1 - e^{-z} with the value of -expm1(-z) and the derivatives of 1 - e^{-z}.

    torch differentiates expm1(y) as expm1(y) + 1, which cancels to 0 once
    e^{-z} < 1e-16, so a radius density d_r Psi would vanish in the tail; the
    derivatives of 1 - exp(-z) are exact there. Use it when writing a CDF.
    """
    smooth = 1.0 - torch.exp(-z)
    return smooth + (-torch.expm1(-z) - smooth).detach()


def _psi_exp(s: Tensor) -> Tensor:
    """Psi(s) = 1 - exp(-s): the radius is Exp(1)."""
    return one_minus_exp(s)


def _psi_tanh(s: Tensor) -> Tensor:
    """Psi(s) = tanh(s) = (1 - e^{-2s}) / (1 + e^{-2s}), written so that its derivatives stay accurate in the tail."""
    return one_minus_exp(2.0 * s) / (1.0 + torch.exp(-2.0 * s))


RADIAL_CDFS: dict[str, Callable[[Tensor], Tensor]] = {"exp": _psi_exp, "tanh": _psi_tanh}
"""Built-in 1-D radius CDFs Psi(s) (THEORY §7.1 worked examples): Exp(1) and the sech^2 law."""
RADIAL_INVERSES: dict[str, Callable[[Tensor], Tensor]] = {"exp": lambda u: -torch.log1p(-u), "tanh": torch.atanh}


class CDFNoise(RadialNoise):
    """|eps| with the user CDF Psi (a name in ``RADIAL_CDFS`` or a callable) (THEORY §7.1 CDF construction, §7.2 GF3).

    Radii come from the closed-form inverse for built-in names and from the
    numeric inverse CDF otherwise; the radius density Psi' from autograd.
    """

    name = "radial"

    def __init__(self, cdf: str | Callable[[Tensor], Tensor] = "exp") -> None:
        self.inverse = None
        if isinstance(cdf, str):
            if cdf not in RADIAL_CDFS:
                raise ValueError(f"unknown radius CDF {cdf!r}; built-in: {', '.join(RADIAL_CDFS)} (or pass a callable)")
            self.cdf_name, self.inverse = cdf, RADIAL_INVERSES[cdf]
            cdf = RADIAL_CDFS[cdf]
        else:
            self.cdf_name = getattr(cdf, "__name__", "custom")
        self.cdf = cdf

    def radius(self, n_dim: int, u: Tensor) -> Tensor:
        return self.inverse(u) if self.inverse is not None else inverse_cdf(self.cdf, u)

    def log_radius_density(self, n_dim: int, rho: Tensor) -> Tensor:
        with torch.enable_grad():
            r = rho.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.cdf(r).sum(), r)
        return torch.log(g)

    def config(self) -> dict:
        return {"cdf": self.cdf_name}


NOISES: Registry[Callable[..., NoiseLaw]] = Registry("noise law")
for _cls in (GaussianNoise, UniformNoise, LaplaceNoise, StudentTNoise, CDFNoise):
    NOISES.register(_cls.name, _cls)


def get_noise(spec: str | dict | NoiseLaw | None) -> NoiseLaw:
    """A noise law from a name, a ``{"name": ..., **options}`` dict, or an instance (None: N(0, I))."""
    return NOISES.build(spec, "gaussian", NoiseLaw)
