"""Green's functions of the continuity equation (THEORY §7.1-§7.3).

The continuity equation d_t p_t + div(f_t p_t) = 0 says that the field
u(t, x) = (p_t(x), f_t(x) p_t(x)) in R^{d+1} is divergence-free (§7.1). A
Green's function G(t, x; x0) solves it for a single point source:

    div_(t,x) G = 0,   G_1(0+, x; x0) = delta(x - x0),   int G_1(t, x; x0) dx = 1,

so G_1 = p_t(x | x0) is a transition density and f_t(x | x0) = G_{>1} / G_1 a
conditional velocity. By linearity u = E_{x0 ~ p_0}[G] solves the data problem
and f_t(x) = E_{x0 ~ p_t(x0 | x)}[f_t(x | x0)] (§7.1, "by linearity").

Every kernel here is isotropic in space (§7.1 Solution B) and is described by
its radial CDF psi_t(r) = P(|x_t - x0| <= r), which is all the CDF construction
(§7.1 "Inverse (CDF) construction", §7.2 GF3) needs:

    p_t(x | x0) = d_r psi_t(r) / (S_d(1) r^{d-1}),
    G_{>1}      = -d_t psi_t(r) / (S_d(1) r^d) (x - x0),
    f_t(x | x0) = -d_t psi_t(r) / (r d_r psi_t(r)) (x - x0),

with r = |x - x0| and S_d(1) = 2 pi^{d/2} / Gamma(d/2) the area of the unit sphere.
The generic path takes these derivatives by autograd (with ``create_graph``
whenever an input requires grad, so the divergence checks can differentiate
again); subclasses replace them by closed forms where they exist:

* :class:`CDFGreen` - any user psi_t(r), everything by autograd (§7.2 GF3);
* :class:`ScaleGreen` - psi_t(r) = Psi(r / t), f = (x - x0) / t (§7.1 "worked example fields");
* :class:`GravityGreen` - the space-time isotropic "gravity" kernel of §7.1 Solution A (PFGM, §6.1);
* :class:`GaussianGreen` - N(x0, sigma_t^2 I), f = (sigma'/sigma)(x - x0) (§7.1 "Gaussian case").

:class:`GreenField` superposes a Green's function over weighted point masses
(§7.3 item 4), and :func:`divergence_residual`, :func:`continuity_residual` and
:func:`normalization` are the checks of §7.3 items 1, 2 and 4. All arithmetic is float64.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import numpy as np
import scipy.integrate
import scipy.special
import torch

from .. import rng
from ..numerics import inverse_cdf
from .continuity import Residual, continuity_residual, space_time_divergence
from ..processes.noise import RADIAL_CDFS, RADIAL_INVERSES, log_sphere_area, one_minus_exp

Tensor = torch.Tensor
TimeLike = float | Tensor
RadialCDF = Callable[[Tensor], Tensor]
_METHODS = ("auto", "numeric")


# --- small helpers ------------------------------------------------------------------------------
def sphere_area(d: int) -> float:
    """S_d(1) = 2 pi^{d/2} / Gamma(d/2), the area of the unit sphere in R^d (S_1 = 2, S_2 = 2 pi, S_3 = 4 pi)."""
    d = _check_dim(d)
    return math.exp(log_sphere_area(d))


def _check_dim(d: int) -> int:
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
        raise ValueError(f"dimension d must be an integer >= 1, got {d!r}")
    return int(d)


def _check_t(t: Tensor, what: str = "t") -> Tensor:
    tv = t.detach()
    if not bool(torch.isfinite(tv).all()) or bool((tv <= 0).any()):
        bad = tv[~(torch.isfinite(tv) & (tv > 0))].flatten()[:3].tolist()
        raise ValueError(f"{what} must be finite and > 0 (the kernel at t = 0 is a point mass), got {bad}")
    return t


def _as_time(t: TimeLike, n: int, device: torch.device | None = None) -> Tensor:
    """t as a float64 tensor of shape (n,), from a scalar, a 0-d / (1,) tensor or an (n,) tensor (graph kept)."""
    tt = torch.as_tensor(t, dtype=torch.float64, device=device)
    if tt.ndim > 1 or (tt.ndim == 1 and tt.shape[0] not in (1, n)):
        raise ValueError(f"t must be a scalar or have shape ({n},) to match {n} points, got shape {tuple(tt.shape)}")
    return _check_t(tt.reshape(-1).expand(n))


def _as_points(x: Tensor | Sequence, d: int, name: str = "x") -> Tensor:
    xx = torch.as_tensor(x, dtype=torch.float64)
    if xx.ndim != 2 or xx.shape[1] != d:
        raise ValueError(f"{name} must have shape (n, d) with d = {d}, got shape {tuple(xx.shape)}")
    return xx


def _as_sources(x0: Tensor | Sequence, n: int, d: int, device: torch.device) -> Tensor:
    """x0 of shape (n, d), or one source (d,) / (1, d) broadcast to all n points."""
    xx = torch.as_tensor(x0, dtype=torch.float64, device=device)
    if xx.ndim == 1:
        xx = xx[None]
    if xx.ndim != 2 or xx.shape[1] != d or xx.shape[0] not in (1, n):
        raise ValueError(f"x0 must have shape ({n}, {d}), (1, {d}) or ({d},) to match x, got shape {tuple(torch.as_tensor(x0).shape)}")
    return xx.expand(n, d)


def _needs_graph(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _uniform_directions(n: int, d: int, gen: rng.GeneratorLike, device: torch.device | None) -> Tensor:
    g = rng.randn((n, d), gen, dtype=torch.float64, device=device)
    return g / torch.linalg.vector_norm(g, dim=1, keepdim=True)


# --- the isotropic Green's function ---------------------------------------------------------------
class GreenFunction(ABC):
    """A space-isotropic Green's function in R^d built from its radial CDF psi_t(r) (THEORY §7.1 Solution B).

    G_1(t, x; x0) = phi_t(r) = p_t(x | x0) and G_{>1} = varphi_t(r) (x - x0) with
    r = |x - x0|. Subclasses implement :meth:`_psi`, elementwise on (n,) tensors;
    every other quantity follows from it by the CDF construction (§7.1):
    p = d_r psi / (S_d r^{d-1}), G_{>1} = -d_t psi / (S_d r^d) (x - x0),
    f = G_{>1} / G_1 = -d_t psi / (r d_r psi) (x - x0).

    Methods take x, x0 of shape (n, d) (x0 may also be one point (d,)) and t a
    scalar or an (n,) tensor with t > 0.
    """

    name: str = "green"

    def __init__(self, d: int) -> None:
        self.d = _check_dim(d)
        self._log_sd = log_sphere_area(self.d)

    @property
    def dim(self) -> int:
        """The space dimension d."""
        return self.d

    def __repr__(self) -> str:
        return f"{type(self).__name__}(d={self.d}, name={self.name!r})"

    # --- the radial CDF ---------------------------------------------------------------------------
    @abstractmethod
    def _psi(self, t: Tensor, r: Tensor) -> Tensor:
        """psi_t(r) for float64 tensors t > 0, r >= 0 of one shape (autograd-able, elementwise)."""

    def psi(self, t: TimeLike, r: Tensor | float) -> Tensor:
        """The radial CDF psi_t(r) = P(|x_t - x0| <= r) (§7.1): 0 at r = 0, 1 at r = inf, a step as t -> 0.

        Differentiable by autograd in t and r; t and r broadcast against each other.
        """
        tt, rr = torch.broadcast_tensors(torch.as_tensor(t, dtype=torch.float64), torch.as_tensor(r, dtype=torch.float64))
        _check_t(tt)
        if bool((rr.detach() < 0).any()):
            raise ValueError("the radius r must be >= 0")
        return self._psi(tt, rr)

    def radius_cdf_numpy(self, t: float | np.ndarray, r: float | np.ndarray) -> np.ndarray:
        """psi_t(r) as a numpy array (for scipy.stats.kstest); t and r broadcast."""
        tt, rr = np.broadcast_arrays(np.asarray(t, dtype=np.float64), np.asarray(r, dtype=np.float64))
        with torch.no_grad():
            return self.psi(torch.from_numpy(tt.copy()), torch.from_numpy(rr.copy())).numpy()

    # --- input handling and the generic (autograd) pieces -------------------------------------------
    def _prepare(self, t: TimeLike, x: Tensor, x0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = _as_points(x, self.d)
        x0 = _as_sources(x0, x.shape[0], self.d, x.device)
        return _as_time(t, x.shape[0], x.device), x, x0

    def _psi_derivatives(self, t: Tensor, r: Tensor, graph: bool) -> tuple[Tensor, Tensor]:
        """(d_t psi_t(r), d_r psi_t(r)), kept on the autograd graph when ``graph``."""
        with torch.enable_grad():
            tg = t if (graph and t.requires_grad) else t.detach().requires_grad_(True)
            rg = r if (graph and r.requires_grad) else r.detach().requires_grad_(True)
            p = self._psi(tg, rg)
            if p.shape != r.shape:
                raise ValueError(f"psi must act elementwise: got shape {tuple(p.shape)} for inputs of shape {tuple(r.shape)}")
            dt, dr = torch.autograd.grad(p.sum(), (tg, rg), create_graph=graph, allow_unused=True)
        dt = torch.zeros_like(r) if dt is None else dt
        dr = torch.zeros_like(r) if dr is None else dr
        return (dt, dr) if graph else (dt.detach(), dr.detach())

    def _generic(self, t: TimeLike, x: Tensor, x0: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        t, x, x0 = self._prepare(t, x, x0)
        diff = x - x0
        r = torch.linalg.vector_norm(diff, dim=1)
        dt, dr = self._psi_derivatives(t, r, _needs_graph(t, x, x0))
        return diff, r, dt, dr

    # --- G, p, f ---------------------------------------------------------------------------------
    def log_density(self, t: TimeLike, x: Tensor, x0: Tensor) -> Tensor:
        """log p_t(x | x0) = log G_1 = log(d_r psi_t(r)) - log S_d(1) - (d - 1) log r (§7.1), shape (n,)."""
        _, r, _, dr = self._generic(t, x, x0)
        return torch.log(dr) - self._log_sd - (self.d - 1) * torch.log(r)

    def density(self, t: TimeLike, x: Tensor, x0: Tensor) -> Tensor:
        """p_t(x | x0) = G_1(t, x; x0), shape (n,)."""
        return self.G(t, x, x0)[0]

    def flux(self, t: TimeLike, x: Tensor, x0: Tensor) -> Tensor:
        """G_{>1}(t, x; x0) = p_t(x | x0) f_t(x | x0), shape (n, d)."""
        return self.G(t, x, x0)[1]

    def G(self, t: TimeLike, x: Tensor, x0: Tensor) -> tuple[Tensor, Tensor]:
        """(G_1 (n,), G_{>1} (n, d)): d_r psi / (S_d r^{d-1}) and -d_t psi / (S_d r^d) (x - x0) (§7.1)."""
        diff, r, dt, dr = self._generic(t, x, x0)
        sd = math.exp(self._log_sd)
        g1 = dr / (sd * r ** (self.d - 1))
        return g1, (-dt / (sd * r**self.d))[:, None] * diff

    def velocity(self, t: TimeLike, x: Tensor, x0: Tensor) -> Tensor:
        """f_t(x | x0) = G_{>1} / G_1 = -d_t psi / (r d_r psi) (x - x0) (§7.1), shape (n, d)."""
        diff, r, dt, dr = self._generic(t, x, x0)
        return (-dt / (r * dr))[:, None] * diff

    # --- sampling --------------------------------------------------------------------------------
    @staticmethod
    def _check_method(method: str) -> None:
        if method not in _METHODS:
            raise ValueError(f"unknown sampling method {method!r}; valid: {', '.join(_METHODS)}")

    def training_pair(self, t: TimeLike, x0: Tensor, generator: rng.GeneratorLike = None) -> tuple[Tensor, Tensor]:
        """GF1 (§7.2): x_t ~ p_t(. | x0) and the regression target f_t(x_t | x0).

        E[f_t(x_t | x0) | x_t] is the marginal field f_t(x_t), so least squares on
        these pairs is unbiased for it (unlike PFGM's normalized batch field, §6.1).
        """
        x_t = self.sample(t, x0, generator)
        return x_t, self.velocity(t, x_t, x0)

    def prior(self, T: float, n: int, generator: rng.GeneratorLike = None) -> Tensor:
        """n draws of the prior p_T(x | 0) (GF2 step 1): the kernel around the origin at time T, for data near 0."""
        return self.sample(T, torch.zeros(n, self.d, dtype=torch.float64), generator)

    def sample_radius(self, t: TimeLike, n: int, generator: rng.GeneratorLike = None, *, method: str = "auto") -> Tensor:
        """n radii R = |x_t - x0| ~ psi_t, shape (n,).

        ``method="numeric"`` inverts psi_t by bisection (§7.2 GF3); ``"auto"`` uses a
        closed-form sampler where the subclass has one and the numeric inverse otherwise.
        """
        self._check_method(method)
        tt = _as_time(t, n)
        gen = rng.as_generator(generator)
        if method == "auto" and (radius := self._exact_radius(tt, n, gen)) is not None:
            return radius
        u = rng.rand((n,), gen, dtype=torch.float64)
        return inverse_cdf(lambda r: self._psi(tt, r), u)

    def sample(self, t: TimeLike, x0: Tensor, generator: rng.GeneratorLike = None, *, method: str = "auto") -> Tensor:
        """x_t ~ p_t(. | x0), shape (n, d) (§7.1 "kernel sampling").

        ``auto`` uses a closed-form sampler where the subclass has one; otherwise
        x0 + R u with R ~ psi_t (:meth:`sample_radius`) and u uniform on the sphere.
        """
        self._check_method(method)
        x0 = _as_points(x0, self.d, "x0")
        gen = rng.as_generator(generator)
        if method == "auto" and (x := self._exact_sample(_as_time(t, x0.shape[0], x0.device), x0, gen)) is not None:
            return x
        radius = self.sample_radius(t, x0.shape[0], gen, method=method).to(x0.device)
        return x0 + radius[:, None] * _uniform_directions(x0.shape[0], self.d, gen, x0.device)

    def _exact_radius(self, t: Tensor, n: int, generator: rng.GeneratorLike) -> Tensor | None:
        """n radii R ~ psi_t by a closed-form sampler, or None where there is none (then psi_t is inverted numerically)."""
        return None

    def _exact_sample(self, t: Tensor, x0: Tensor, generator: rng.GeneratorLike) -> Tensor | None:
        """x_t ~ p_t(. | x0) by a closed-form sampler, or None where there is none (then x0 + R u)."""
        return None


class CDFGreen(GreenFunction):
    """The Green's function of a user radial CDF psi(t, r), everything by autograd (§7.1, §7.2 GF3).

    ``psi`` takes float64 tensors t > 0, r >= 0 of one shape and returns psi_t(r)
    elementwise with torch operations. It must satisfy §7.1's conditions:
    psi_t(0) = 0, nondecreasing in r, psi_t(inf) = 1, and psi_t(r) -> 1 for r > 0 as t -> 0.
    Only its derivatives enter p and f, so write it in a form whose derivatives
    stay accurate where 1 - psi is tiny (e.g. :func:`one_minus_exp`, not
    ``-torch.expm1(-z)``). Far in the tail, where d_t psi and d_r psi underflow,
    f = -d_t psi / (r d_r psi) is 0/0; closed-form subclasses avoid this.
    """

    def __init__(self, d: int, psi: Callable[[Tensor, Tensor], Tensor], name: str = "cdf") -> None:
        super().__init__(d)
        if not callable(psi):
            raise ValueError(f"psi must be a callable psi(t, r), got {type(psi).__name__}")
        self._fn, self.name = psi, name
        grid = torch.tensor([0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0], dtype=torch.float64)
        with torch.no_grad():
            _check_cdf_values(psi(torch.ones_like(grid), grid), "psi(1, r)")

    def _psi(self, t: Tensor, r: Tensor) -> Tensor:
        return self._fn(t, r)


def _check_cdf_values(v: Tensor, what: str) -> None:
    v = torch.as_tensor(v, dtype=torch.float64)
    ok = v.ndim == 1 and bool(torch.isfinite(v).all()) and abs(float(v[0])) <= 1e-12
    ok = ok and bool(((v >= -1e-12) & (v <= 1 + 1e-12)).all()) and bool((v[1:] >= v[:-1] - 1e-12).all())
    if not ok or float(v[-1]) <= float(v[0]):
        raise ValueError(f"{what} must be a CDF on [0, inf): 0 at 0, nondecreasing, values in [0, 1]; got {v.tolist()}")


# --- scale families ------------------------------------------------------------------------------


class ScaleGreen(GreenFunction):
    """A scale family psi_t(r) = Psi(r / t) (§7.1 "worked example fields", §7.2 GF1).

    varphi / phi = 1 / t, so f_t(x | x0) = (x - x0) / t and x_t = x0 + t rho u with
    rho ~ Psi and u uniform. ``Psi`` is a 1-D CDF on [0, inf) (torch, elementwise)
    or a name in :data:`RADIAL_CDFS` ("exp": 1 - e^{-s}, "tanh": tanh s).
    ``inverse`` is an optional closed-form Psi^{-1}, used by ``method="auto"``.
    """

    def __init__(self, d: int, Psi: str | RadialCDF, name: str | None = None, inverse: RadialCDF | None = None) -> None:
        super().__init__(d)
        if isinstance(Psi, str):
            if Psi not in RADIAL_CDFS:
                raise ValueError(f"unknown radial CDF {Psi!r}; valid: {', '.join(sorted(RADIAL_CDFS))}")
            name = name or Psi
            inverse = inverse or RADIAL_INVERSES.get(Psi)
            Psi = RADIAL_CDFS[Psi]
        if not callable(Psi):
            raise ValueError(f"Psi must be a callable CDF or one of {sorted(RADIAL_CDFS)}, got {type(Psi).__name__}")
        with torch.no_grad():
            _check_cdf_values(Psi(torch.tensor([0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0], dtype=torch.float64)), "Psi(s)")
        self.Psi, self.inverse, self.name = Psi, inverse, name or "scale"

    def _psi(self, t: Tensor, r: Tensor) -> Tensor:
        return self.Psi(r / t)

    def G(self, t: TimeLike, x: Tensor, x0: Tensor) -> tuple[Tensor, Tensor]:
        """(G_1, G_{>1}) with G_1 from d_r Psi(r/t) by autograd and G_{>1} = G_1 (x - x0) / t (§7.1)."""
        t, x, x0 = self._prepare(t, x, x0)
        g1 = self.density(t, x, x0)
        return g1, (g1 / t)[:, None] * (x - x0)

    def density(self, t: TimeLike, x: Tensor, x0: Tensor) -> Tensor:
        """p_t(x | x0) = Psi'(r/t) / (t S_d r^{d-1}) (Psi' by autograd), shape (n,)."""
        _, r, _, dr = self._generic(t, x, x0)
        return dr / (math.exp(self._log_sd) * r ** (self.d - 1))

    def velocity(self, t: TimeLike, x: Tensor, x0: Tensor) -> Tensor:
        """f_t(x | x0) = (x - x0) / t: straight lines into x0 (§7.1 "worked example fields")."""
        t, x, x0 = self._prepare(t, x, x0)
        return (x - x0) / t[:, None]

    def sample_radius(self, t: TimeLike, n: int, generator: rng.GeneratorLike = None, *, method: str = "auto") -> Tensor:
        """R = t rho with rho ~ Psi: by the closed-form inverse (``auto``, if known) or by bisection on Psi."""
        self._check_method(method)
        tt = _as_time(t, n)
        u = rng.rand((n,), rng.as_generator(generator), dtype=torch.float64)
        if method == "auto" and self.inverse is not None:
            rho = self.inverse(u)
        else:
            rho = inverse_cdf(self.Psi, u)
        return tt * rho


# --- gravity (space-time isotropic) ----------------------------------------------------------------
def _betainc_series(a: float, b: float, x: Tensor, y: Tensor, terms: int) -> Tensor:
    """I_x(a, b) = x^a y^b / (a B(a, b)) sum_k (a+b)_k / (a+1)_k x^k, y = 1 - x (positive terms; for x <= 1/2)."""
    k = torch.arange(terms, dtype=torch.float64, device=x.device)
    log_c = torch.lgamma(a + b + k) - math.lgamma(a + b) - torch.lgamma(a + 1 + k) + math.lgamma(a + 1)
    log_sum = torch.logsumexp(log_c + torch.xlogy(k, x[..., None]), dim=-1)
    log_beta = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    return torch.exp(a * torch.log(x) + b * torch.log(y) - math.log(a) - log_beta + log_sum)


class GravityGreen(GreenFunction):
    """The space-time isotropic ("gravity") Green's function of §7.1 Solution A.

    G = C (t, x - x0) / (t^2 + |x - x0|^2)^{(d+1)/2},  C = Gamma((d+1)/2) / pi^{(d+1)/2} = 2 / S_{d+1}(1).

    G_1 is the multivariate Cauchy kernel of scale t, f_t(x | x0) = (x - x0) / t, and
    x_t = x0 + t eps_x / |eps_t| with eps ~ N(0, I_{d+1}) (§7.1 "kernel sampling").
    Up to the factor -2 and the order of components, G is PFGM's field F of one
    source (§6.1), so dx/dt = G_{>1} / G_1 = F_x / F_t. The radial CDF is
    psi_t(r) = I_s(d/2, 1/2) with s = r^2 / (r^2 + t^2) (regularized incomplete beta).
    """

    name = "gravity"

    def __init__(self, d: int) -> None:
        super().__init__(d)
        self.log_C = math.lgamma(0.5 * (self.d + 1)) - 0.5 * (self.d + 1) * math.log(math.pi)
        self._terms = 100 + 2 * self.d

    @property
    def C(self) -> float:
        """The normalizing constant Gamma((d+1)/2) / pi^{(d+1)/2} = 2 / S_{d+1}(1) (§7.1)."""
        return math.exp(self.log_C)

    def _psi(self, t: Tensor, r: Tensor) -> Tensor:
        """I_s(d/2, 1/2): the lower series for s <= 1/2, 1 - I_{1-s}(1/2, d/2) above (both with positive terms)."""
        q = r * r + t * t
        s, c = r * r / q, t * t / q
        low = s <= 0.5
        s_lo, c_lo = torch.where(low, s, 0.25), torch.where(low, c, 0.75)
        s_hi, c_hi = torch.where(low, 0.75, s), torch.where(low, 0.25, c)
        a = 0.5 * self.d
        lower = _betainc_series(a, 0.5, s_lo, c_lo, self._terms)
        upper = 1.0 - _betainc_series(0.5, a, c_hi, s_hi, self._terms)
        return torch.where(low, lower, upper)

    def radius_cdf_numpy(self, t: float | np.ndarray, r: float | np.ndarray) -> np.ndarray:
        """psi_t(r) = I_{r^2/(r^2+t^2)}(d/2, 1/2) by scipy.special.betainc."""
        t, r = np.broadcast_arrays(np.asarray(t, dtype=np.float64), np.asarray(r, dtype=np.float64))
        return scipy.special.betainc(0.5 * self.d, 0.5, r * r / (r * r + t * t))

    def log_density(self, t: TimeLike, x: Tensor, x0: Tensor) -> Tensor:
        """log G_1 = log C + log t - (d+1)/2 log(t^2 + |x - x0|^2)."""
        t, x, x0 = self._prepare(t, x, x0)
        r2 = ((x - x0) ** 2).sum(1)
        return self.log_C + torch.log(t) - 0.5 * (self.d + 1) * torch.log(t * t + r2)

    def G(self, t: TimeLike, x: Tensor, x0: Tensor) -> tuple[Tensor, Tensor]:
        """C (t, x - x0) / (t^2 + |x - x0|^2)^{(d+1)/2}, split as (G_1 (n,), G_{>1} (n, d))."""
        t, x, x0 = self._prepare(t, x, x0)
        diff = x - x0
        w = torch.exp(self.log_C - 0.5 * (self.d + 1) * torch.log(t * t + (diff**2).sum(1)))
        return w * t, w[:, None] * diff

    def density(self, t: TimeLike, x: Tensor, x0: Tensor) -> Tensor:
        """G_1 = C t / (t^2 + |x - x0|^2)^{(d+1)/2}, shape (n,)."""
        return torch.exp(self.log_density(t, x, x0))

    def velocity(self, t: TimeLike, x: Tensor, x0: Tensor) -> Tensor:
        """f_t(x | x0) = (x - x0) / t (§7.1 "conditional velocity")."""
        t, x, x0 = self._prepare(t, x, x0)
        return (x - x0) / t[:, None]

    def _exact_radius(self, t: Tensor, n: int, generator: rng.GeneratorLike) -> Tensor:
        """R = t |eps_x| / |eps_t|, eps ~ N(0, I_{d+1})."""
        eps = rng.randn((n, self.d + 1), generator, dtype=torch.float64)
        return t * torch.linalg.vector_norm(eps[:, :-1], dim=1) / eps[:, -1].abs()

    def _exact_sample(self, t: Tensor, x0: Tensor, generator: rng.GeneratorLike) -> Tensor:
        """x_t = x0 + t eps_x / |eps_t|, eps ~ N(0, I_{d+1})."""
        eps = rng.randn((x0.shape[0], self.d + 1), generator, dtype=torch.float64, device=x0.device)
        return x0 + t[:, None] * eps[:, :-1] / eps[:, -1:].abs()


# --- Gaussian ------------------------------------------------------------------------------------
class GaussianGreen(GreenFunction):
    """The Gaussian Green's function p_t(x | x0) = N(x0, sigma_t^2 I) (§7.1 "Gaussian case", §7.2 GF1).

    ``sigma`` maps a float64 tensor t to sigma_t (torch, elementwise, increasing,
    sigma_0 = 0), e.g. a GaussianProcess's ``sigma`` method (alpha = 1, the VE form).
    varphi_t = (sigma'/sigma) phi_t, so f_t(x | x0) = (sigma'_t / sigma_t)(x - x0),
    with sigma' by autograd; psi_t(r) = P(d/2, r^2 / (2 sigma_t^2)) (regularized lower gamma).
    """

    name = "gaussian"

    def __init__(self, d: int, sigma: Callable[[Tensor], Tensor]) -> None:
        super().__init__(d)
        if not callable(sigma):
            raise ValueError(f"sigma must be a callable t -> sigma_t, got {type(sigma).__name__}")
        self.sigma_fn = sigma

    def sigma(self, t: Tensor) -> Tensor:
        """sigma_t, checked to be finite and > 0."""
        s = torch.as_tensor(self.sigma_fn(t), dtype=torch.float64)
        if s.shape != t.shape:
            s = s.expand(t.shape)
        sv = s.detach()
        if not bool((torch.isfinite(sv) & (sv > 0)).all()):
            raise ValueError(f"sigma(t) must be finite and > 0 for t > 0, got {sv.flatten()[:3].tolist()}")
        return s

    def sigma_and_derivative(self, t: TimeLike) -> tuple[Tensor, Tensor]:
        """(sigma_t, d sigma_t / dt), the derivative by autograd (kept on the graph if t requires grad)."""
        tt = _check_t(torch.as_tensor(t, dtype=torch.float64))
        graph = _needs_graph(tt)
        with torch.enable_grad():
            tg = tt if graph else tt.detach().requires_grad_(True)
            s = self.sigma(tg)
            (ds,) = torch.autograd.grad(s.sum(), tg, create_graph=graph, allow_unused=True)
        ds = torch.zeros_like(s) if ds is None else ds
        return (s, ds) if graph else (s.detach(), ds.detach())

    def _psi(self, t: Tensor, r: Tensor) -> Tensor:
        s = self.sigma(t)
        return torch.special.gammainc(torch.full_like(r, 0.5 * self.d), r * r / (2.0 * s * s))

    def radius_cdf_numpy(self, t: float | np.ndarray, r: float | np.ndarray) -> np.ndarray:
        """psi_t(r) = P(d/2, r^2 / (2 sigma_t^2)) by scipy.special.gammainc."""
        t, r = np.broadcast_arrays(np.asarray(t, dtype=np.float64), np.asarray(r, dtype=np.float64))
        with torch.no_grad():
            s = self.sigma(_check_t(torch.from_numpy(t.copy()))).numpy()
        return scipy.special.gammainc(0.5 * self.d, r * r / (2.0 * s * s))

    def log_density(self, t: TimeLike, x: Tensor, x0: Tensor) -> Tensor:
        """log N(x; x0, sigma_t^2 I), shape (n,)."""
        t, x, x0 = self._prepare(t, x, x0)
        s = self.sigma(t)
        r2 = ((x - x0) ** 2).sum(1)
        return -0.5 * r2 / (s * s) - self.d * torch.log(s) - 0.5 * self.d * math.log(2 * math.pi)

    def density(self, t: TimeLike, x: Tensor, x0: Tensor) -> Tensor:
        """N(x; x0, sigma_t^2 I), shape (n,)."""
        return torch.exp(self.log_density(t, x, x0))

    def G(self, t: TimeLike, x: Tensor, x0: Tensor) -> tuple[Tensor, Tensor]:
        """(p_t(x | x0), (sigma'/sigma) (x - x0) p_t(x | x0)) (§7.1: varphi = (sigma'/sigma) phi)."""
        g1 = self.density(t, x, x0)
        return g1, g1[:, None] * self.velocity(t, x, x0)

    def velocity(self, t: TimeLike, x: Tensor, x0: Tensor) -> Tensor:
        """f_t(x | x0) = (sigma'_t / sigma_t)(x - x0) (§7.1, §7.2 GF1)."""
        t, x, x0 = self._prepare(t, x, x0)
        s, ds = self.sigma_and_derivative(t)
        return (ds / s)[:, None] * (x - x0)

    def _exact_radius(self, t: Tensor, n: int, generator: rng.GeneratorLike) -> Tensor:
        """R = sigma_t |eps|, eps ~ N(0, I_d)."""
        eps = rng.randn((n, self.d), generator, dtype=torch.float64)
        return self.sigma(t) * torch.linalg.vector_norm(eps, dim=1)

    def _exact_sample(self, t: Tensor, x0: Tensor, generator: rng.GeneratorLike) -> Tensor:
        """x_t = x0 + sigma_t eps, eps ~ N(0, I_d)."""
        eps = rng.randn(x0.shape, generator, dtype=torch.float64, device=x0.device)
        return x0 + self.sigma(t)[:, None] * eps


# --- point-mass data -----------------------------------------------------------------------------
class GreenField:
    """u = sum_j pi_j G(t, x; x_j) for weighted point masses p_0 = sum_j pi_j delta(x - x_j) (§7.1, §7.3 item 4).

    u_1 = p_t(x) is the noisy marginal, u_{>1} = p_t f_t its flux, and
    f_t(x) = u_{>1} / u_1 = sum_j w_j(x) f_t(x | x_j) with posterior weights
    w_j propto pi_j p_t(x | x_j). ``points`` is (J, d) (or a PointMasses-like
    object with ``points`` and ``weights``); ``weights`` default to uniform.
    """

    def __init__(self, green: GreenFunction, points: Tensor | Sequence, weights: Sequence[float] | Tensor | None = None) -> None:
        if not isinstance(green, GreenFunction):
            raise ValueError(f"green must be a GreenFunction, got {type(green).__name__}")
        if hasattr(points, "points") and hasattr(points, "weights"):
            points, weights = points.points, points.weights if weights is None else weights
        pts = _as_points(points, green.dim, "points")
        if pts.shape[0] < 1:
            raise ValueError("GreenField needs at least one point")
        w = torch.ones(pts.shape[0], dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (pts.shape[0],) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(f"weights must be non-negative, one per point ({pts.shape[0]}), with a positive sum")
        self.green, self.points, self.weights = green, pts, w / w.sum()

    @property
    def dim(self) -> int:
        """The space dimension d."""
        return self.green.dim

    def _pairs(self, t: TimeLike, x: Tensor) -> tuple[Tensor, Tensor, Tensor, int, int]:
        x = _as_points(x, self.dim)
        n, J = x.shape[0], self.points.shape[0]
        tt = _as_time(t, n, x.device)
        return tt.repeat_interleave(J), x.repeat_interleave(J, 0), self.points.to(x.device).repeat(n, 1), n, J

    def log_joint(self, t: TimeLike, x: Tensor) -> Tensor:
        """log pi_j + log p_t(x | x_j), shape (n, J)."""
        ts, xs, x0, n, J = self._pairs(t, x)
        return torch.log(self.weights.to(xs.device))[None] + self.green.log_density(ts, xs, x0).reshape(n, J)

    def log_density(self, t: TimeLike, x: Tensor) -> Tensor:
        """log u_1 = log sum_j pi_j p_t(x | x_j), shape (n,)."""
        return torch.logsumexp(self.log_joint(t, x), dim=1)

    def density(self, t: TimeLike, x: Tensor) -> Tensor:
        """u_1(t, x) = p_t(x), shape (n,)."""
        return torch.exp(self.log_density(t, x))

    def flux(self, t: TimeLike, x: Tensor) -> Tensor:
        """u_{>1}(t, x) = sum_j pi_j G_{>1}(t, x; x_j), shape (n, d)."""
        ts, xs, x0, n, J = self._pairs(t, x)
        g = self.green.flux(ts, xs, x0).reshape(n, J, self.dim)
        return (self.weights.to(g.device)[None, :, None] * g).sum(1)

    def G(self, t: TimeLike, x: Tensor) -> tuple[Tensor, Tensor]:
        """(u_1 (n,), u_{>1} (n, d))."""
        return self.density(t, x), self.flux(t, x)

    def posterior_weights(self, t: TimeLike, x: Tensor) -> Tensor:
        """w_j(x) = p(x0 = x_j | x_t = x) = softmax_j(log pi_j + log p_t(x | x_j)), shape (n, J)."""
        return torch.softmax(self.log_joint(t, x), dim=1)

    def posterior_mean(self, t: TimeLike, x: Tensor) -> Tensor:
        """E[x0 | x_t = x] = sum_j w_j x_j, shape (n, d)."""
        return self.posterior_weights(t, x) @ self.points.to(torch.as_tensor(x).device)

    def velocity(self, t: TimeLike, x: Tensor) -> Tensor:
        """f_t(x) = sum_j w_j(x) f_t(x | x_j) (§7.1, §7.3 item 4), shape (n, d)."""
        ts, xs, x0, n, J = self._pairs(t, x)
        w = torch.softmax(self.log_joint(t, x), dim=1)
        f = self.green.velocity(ts, xs, x0).reshape(n, J, self.dim)
        return (w[..., None] * f).sum(1)


# --- checks (§7.3) -------------------------------------------------------------------------------
def divergence_residual(green: GreenFunction, t: TimeLike, x: Tensor, x0: Tensor) -> Residual:
    """nabla_(t,x) . G(t, x; x0) = d_t G_1 + div_x G_{>1} per point, by autograd (§7.3 item 1).

    Returns :class:`Residual` (residual (n,), scale (n,)); ``.relative`` is the
    residual over |d_t G_1| + sum_i |d_{x_i} G_i|, the size of the terms that cancel.
    """
    x = _as_points(x, green.dim)
    x0 = _as_sources(x0, x.shape[0], green.dim, x.device).detach()
    return space_time_divergence(lambda tt, xx: green.G(tt, xx, x0), _as_time(t, x.shape[0], x.device), x)


def normalization(
    green: GreenFunction,
    t: float,
    x0: Tensor | Sequence[float],
    h: Callable[[Tensor], Tensor] | None = None,
    *,
    n_angles: int = 32,
    tol: float = 1e-11,
) -> float:
    """int_{R^d} G_1(t, x; x0) h(x) dx by scipy quadrature, d = 1 or 2 (§7.3 items 2-3); h = 1 by default.

    The integral is written in polar coordinates about x0,
    int_{S^{d-1}} int_0^inf G_1(t, x0 + r u) h(x0 + r u) r^{d-1} dr du, which is
    exact (a change of variables, not an isotropy assumption: the density is
    evaluated at genuine points x of R^d). The Jacobian r^{d-1} removes the 1/r
    singularity that some kernels have at x0 in d = 2. For d = 1 the "sphere" is
    {-1, +1} and this is the integral over the line split at x0. For d = 2 the
    angle uses the trapezoidal rule on n_angles equispaced angles, which converges
    geometrically for a smooth periodic integrand (and is exact for an isotropic
    one); the radius uses scipy.integrate.quad on [0, m] and [m, inf), m the median radius.
    """
    d = green.dim
    if d > 2:
        raise ValueError(f"normalization integrates by quadrature in d = 1 or 2 only, got d = {d}")
    tf = float(t)
    if not (math.isfinite(tf) and tf > 0):
        raise ValueError(f"t must be finite and > 0, got {t}")
    x0t = torch.as_tensor(x0, dtype=torch.float64).reshape(-1)
    if x0t.shape != (d,):
        raise ValueError(f"x0 must be one point of shape ({d},), got shape {tuple(torch.as_tensor(x0).shape)}")
    if d == 1:
        dirs, w = torch.tensor([[-1.0], [1.0]], dtype=torch.float64), 1.0
    else:
        theta = 2 * math.pi * torch.arange(n_angles, dtype=torch.float64) / n_angles
        dirs, w = torch.stack([torch.cos(theta), torch.sin(theta)], dim=1), 2 * math.pi / n_angles
    src = x0t[None].expand(dirs.shape[0], d)

    tt = torch.full((1,), tf, dtype=torch.float64)
    m = float(inverse_cdf(lambda r: green._psi(tt, r), torch.full((1,), 0.5, dtype=torch.float64))[0])

    def integrand(rho: float) -> float:  # r = m rho, so the kernel has unit scale in rho
        r = m * rho
        x = src + r * dirs
        with torch.no_grad():
            v = green.density(tf, x, src) * r ** (d - 1)
            if h is not None:  # where the density underflows to 0 the product is 0, even if h(x) overflows
                v = torch.where(v > 0, v * torch.as_tensor(h(x), dtype=torch.float64), torch.zeros_like(v))
        return m * w * float(v.sum())

    kw = dict(epsabs=tol, epsrel=tol, limit=500)
    near = scipy.integrate.quad(integrand, 0.0, 1.0, **kw)[0]
    far = scipy.integrate.quad(integrand, 1.0, math.inf, **kw)[0]
    return near + far


__all__ = [
    "RADIAL_CDFS",
    "CDFGreen",
    "GaussianGreen",
    "GravityGreen",
    "GreenField",
    "GreenFunction",
    "Residual",
    "ScaleGreen",
    "continuity_residual",
    "divergence_residual",
    "inverse_cdf",
    "normalization",
    "one_minus_exp",
    "sphere_area",
]
