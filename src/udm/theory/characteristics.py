"""ODE diffusions by the method of characteristics (THEORY §8.1-§8.2, algorithms C1 and C4).

Pick an endpoint map ``x_T = phi_t(x_t | x0)``, invertible in ``x_t``, such that every
``x_T`` flows to ``x0`` at ``t = 0``, and a simple law ``p_T`` for ``x_T``. Then (§8.1):

* Step 1, velocity: ``f_t(x | x0) = -(d phi_t / d x)^{-1} d phi_t / d t`` (constant ``phi`` along the flow);
* Step 2, density along the characteristic ``x_s = phi_s^{-1}(x_T | x0)``:
  ``log p_t(x | x0) = log p_T(phi_t(x | x0)) + int_t^T div f_s(x_s | x0) ds``;
* Step 3 / C4, the marginal pair of finite data ``p_0 = sum_j pi_j delta(x - x_j)``:
  ``p_t(x) = sum_j pi_j p_t(x | x_j)`` and
  ``f_t(x) = sum_j pi_j p_t(x | x_j) f_t(x | x_j) / (sum_j pi_j p_t(x | x_j) + floor)``.

:class:`Characteristic` is the generic constructor C1 (autograd Jacobians and an
adaptive ODE for the integral); :class:`LinearPath` (``x_t = mu_t(x0) + sigma_t x1``,
§8.1 worked example 2) and :class:`StraightLine` (example 1) override everything
with closed forms. :class:`ExactField` is C4 and :func:`continuity_residual` checks
``d_t p_t + div(p_t f_t) = 0`` (§8.3 item 2). Priors are any ``log p_T``; the
noise laws of :mod:`udm.processes.noise` (Gaussian, uniform box, Laplace, ...)
provide ``log_prob`` and draws.

Conventions: float64 throughout; ``x`` and ``x0`` are ``(n, d)``; ``t`` is a scalar or
``(n,)`` in ``(0, T]`` and is handed to user maps as an ``(n,)`` tensor (except the
``mu``, ``sigma`` of :class:`LinearPath`, which get an ``(n, 1)`` column). User maps
must act row by row (row ``i`` of the output depends on row ``i`` of the inputs only):
batched Jacobians are taken by one backward pass per output coordinate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torchdiffeq import odeint

from .. import rng
from .continuity import continuity_residual, exact_divergence, jacobian_rows

Tensor = torch.Tensor
EndpointMap = Callable[[Tensor, Tensor, Tensor], Tensor]
LogProb = Callable[[Tensor], Tensor]
PriorSampler = Callable[[int, rng.GeneratorLike], Tensor]
TimeLike = float | Tensor


def _f64(v: float | Sequence | Tensor, device: torch.device | None = None) -> Tensor:
    """``v`` as a float64 tensor; a tensor keeps its autograd graph."""
    if isinstance(v, Tensor):
        return v.to(dtype=torch.float64, device=device if device is not None else v.device)
    return torch.as_tensor(v, dtype=torch.float64, device=device)


def _grad_leaf(v: Tensor) -> Tensor:
    """``v`` itself when it is already tracked by autograd, else a fresh leaf that requires grad."""
    return v if v.requires_grad else v.detach().requires_grad_(True)


def _tracks(*vs: Tensor) -> bool:
    """Whether the caller differentiates through a result built from ``vs``."""
    return torch.is_grad_enabled() and any(v.requires_grad for v in vs)


def _finish(out: Tensor, track: bool) -> Tensor:
    return out if track else out.detach()


def _check_points(x: Tensor | Sequence, name: str = "x", dim: int | None = None) -> Tensor:
    x = _f64(x)
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"{name} must have shape (n, d) with d >= 1, got {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} must have d = {dim} columns, got shape {tuple(x.shape)}")
    return x


def _check_times(t: TimeLike, n: int, T: float, device: torch.device) -> Tensor:
    """``t`` as an ``(n,)`` float64 tensor, checked to lie in ``(0, T]``."""
    t = _f64(t, device)
    if t.ndim == 0:
        t = t.expand(n).clone()
    elif t.shape != (n,):
        raise ValueError(f"t must be a scalar or have shape ({n},), got {tuple(t.shape)}")
    td = t.detach()
    if n and (not bool(torch.isfinite(td).all()) or bool((td <= 0).any()) or bool((td > T).any())):
        raise ValueError(f"t must lie in (0, T] = (0, {T}], got values in [{float(td.min())}, {float(td.max())}]")
    return t


class Characteristic:
    """C1 (THEORY §8.2): velocity and conditional density from an endpoint map ``phi_t(x | x0) = x_T``.

    ``endpoint(t, x, x0)`` maps ``t`` ``(n,)``, ``x`` and ``x0`` ``(n, d)`` to ``x_T`` ``(n, d)``; it
    must be differentiable (twice for :meth:`divergence`, three times inside
    :func:`continuity_residual`) and invertible in ``x`` for ``t`` in ``(0, T]``.
    ``prior_log_prob(x_T)`` returns ``log p_T`` of shape ``(n,)`` (``-inf`` off a compact support).
    """

    def __init__(self, endpoint: EndpointMap, prior_log_prob: LogProb, T: float = 1.0) -> None:
        if not callable(endpoint) or not callable(prior_log_prob):
            raise ValueError("endpoint and prior_log_prob must be callables")
        if not (math.isfinite(T) and T > 0):
            raise ValueError(f"T must be a positive finite number, got {T}")
        self.endpoint, self.prior_log_prob, self.T = endpoint, prior_log_prob, float(T)

    # ------------------------------------------------------------------ checks
    def _check(self, t: TimeLike, x: Tensor | Sequence, x0: Tensor | Sequence) -> tuple[Tensor, Tensor, Tensor]:
        """Validated float64 ``(t (n,), x (n, d), x0 (n, d))``; ``x0`` of shape ``(d,)`` or ``(1, d)`` is broadcast."""
        x = _check_points(x)
        n, d = x.shape
        x0 = _f64(x0, x.device)
        if x0.shape in ((d,), (1, d)):
            x0 = x0.reshape(1, d).expand(n, d)
        if x0.shape != (n, d):
            raise ValueError(f"x0 must have the shape of x, {(n, d)}, or ({d},) or (1, {d}); got {tuple(x0.shape)}")
        return _check_times(t, n, self.T, x.device), x, x0

    def _prior(self, u: Tensor) -> Tensor:
        lp = _f64(self.prior_log_prob(u))
        if lp.shape != (u.shape[0],):
            raise ValueError(f"prior_log_prob must return shape ({u.shape[0]},), got {tuple(lp.shape)}")
        return lp

    # ------------------------------------------------ raw maps (no validation)
    def _endpoint(self, t: Tensor, x: Tensor, x0: Tensor) -> Tensor:
        u = self.endpoint(t, x, x0)
        if not isinstance(u, Tensor) or u.shape != x.shape:
            raise ValueError(f"endpoint must return a tensor of shape {tuple(x.shape)}, got {getattr(u, 'shape', type(u))}")
        return u

    def _jacobians(self, t: Tensor, x: Tensor, x0: Tensor, with_time: bool = True) -> tuple[Tensor, Tensor, Tensor | None]:
        """``phi``, ``d phi / d x`` ``(n, d, d)`` and ``d phi / d t`` ``(n, d)``, all with graphs to ``t``, ``x``."""
        phi = self._endpoint(t, x, x0)
        jx = jacobian_rows(phi, x, create_graph=True)
        jt = jacobian_rows(phi, t, create_graph=True) if with_time else None
        return phi, jx, jt

    def _velocity(self, t: Tensor, x: Tensor, x0: Tensor) -> Tensor:
        """Eq. of §8.1 step 1: ``f = -(d phi/d x)^{-1} d phi/d t``; ``t``, ``x`` must require grad."""
        _, jx, jt = self._jacobians(t, x, x0)
        return -torch.linalg.solve(jx, jt.unsqueeze(-1)).squeeze(-1)

    def _velocity_divergence(self, t: Tensor, x: Tensor, x0: Tensor) -> tuple[Tensor, Tensor]:
        f = self._velocity(t, x, x0)
        return f, exact_divergence(f, x, create_graph=True)

    def _log_density_direct(self, t: Tensor, x: Tensor, x0: Tensor) -> Tensor:
        phi, jx, _ = self._jacobians(t, x, x0, with_time=False)
        return self._prior(phi) + torch.linalg.slogdet(jx)[1]

    def _run(self, fn: Callable[..., Tensor], t: Tensor, x: Tensor, x0: Tensor) -> Tensor:
        """Evaluate a raw map with autograd on and detach unless the caller differentiates."""
        track = _tracks(t, x, x0)
        with torch.enable_grad():
            out = fn(_grad_leaf(t), _grad_leaf(x), x0)
        return _finish(out, track)

    # ------------------------------------------------------------- public API
    def velocity(self, t: TimeLike, x: Tensor, x0: Tensor) -> Tensor:
        """``f_t(x | x0) = -(d phi_t/d x)^{-1} d phi_t/d t`` (§8.1 step 1, C1), shape ``(n, d)``."""
        return self._run(self._velocity, *self._check(t, x, x0))

    def divergence(self, t: TimeLike, x: Tensor, x0: Tensor) -> Tensor:
        """``div_x f_t(x | x0) = tr(d f/d x)``, exact by autograd, shape ``(n,)``."""
        return self._run(lambda *a: self._velocity_divergence(*a)[1], *self._check(t, x, x0))

    def phi(self, t: TimeLike, x: Tensor, x0: Tensor) -> Tensor:
        """``x_T = phi_t(x | x0)``, shape ``(n, d)``."""
        t, x, x0 = self._check(t, x, x0)
        return self._endpoint(t, x, x0)

    def log_density_direct(self, t: TimeLike, x: Tensor, x0: Tensor) -> Tensor:
        """``log p_T(phi_t(x | x0)) + log |det d phi_t/d x|``: the change of variables, no ODE, shape ``(n,)``.

        This is the law of ``x_t = phi_t^{-1}(x_T | x0)`` with ``x_T ~ p_T``; it equals the
        integral form of :meth:`log_density`. Differentiable (used by :class:`ExactField`).
        """
        return self._run(self._log_density_direct, *self._check(t, x, x0))

    def invert(
        self, t: TimeLike, x_T: Tensor, x0: Tensor, x_init: Tensor | None = None, tol: float = 1e-13, max_iter: int = 100
    ) -> Tensor:
        """Solve ``phi_t(x | x0) = x_T`` for ``x`` by Newton's method (start ``x_init``, default ``x_T``)."""
        t, x_T, x0 = self._check(t, x_T, x0)
        t, x_T, x0 = t.detach(), x_T.detach(), x0.detach()
        x = x_T.clone() if x_init is None else _check_points(x_init, "x_init", x_T.shape[1]).detach().clone()
        if x.shape != x_T.shape:
            raise ValueError(f"x_init must have shape {tuple(x_T.shape)}, got {tuple(x.shape)}")
        for _ in range(max_iter):
            with torch.enable_grad():
                xg = x.requires_grad_(True)
                phi, jx, _ = self._jacobians(t, xg, x0, with_time=False)
            step = torch.linalg.solve(jx.detach(), (phi.detach() - x_T).unsqueeze(-1)).squeeze(-1)
            x = x.detach() - step
            if bool((step.abs() <= tol * (1.0 + x.abs())).all()):
                return x
        raise RuntimeError(f"Newton inversion of the endpoint map did not converge in {max_iter} iterations")

    def trajectory(self, x_T: Tensor, x0: Tensor, times: Tensor | Sequence[float], rtol: float = 1e-9, atol: float = 1e-9) -> Tensor:
        """The characteristic ``x_s`` with ``phi_s(x_s | x0) = x_T`` at ``times``, shape ``(len(times), n, d)``.

        The start at ``s = T`` solves ``phi_T(x | x0) = x_T`` by Newton (the identity when
        ``phi_T = id``); then ``dx/ds = f_s(x | x0)`` is integrated from ``T`` down by ``odeint`` (dopri5).
        ``times`` may come in any order, each in ``(0, T]``.
        """
        tT, x_T, x0 = self._check(self.T, x_T, x0)
        x0 = x0.detach()
        times = _f64(times, x_T.device).detach()
        if times.ndim != 1 or times.numel() == 0:
            raise ValueError(f"times must be a non-empty 1-D sequence, got shape {tuple(times.shape)}")
        _check_times(times, times.shape[0], self.T, x_T.device)
        start = self.invert(tT, x_T, x0)
        uniq, inverse = torch.unique(times, return_inverse=True)
        grid = uniq.flip(0)
        prepended = bool(grid[0] < self.T)
        if prepended:
            grid = torch.cat([grid.new_tensor([self.T]), grid])
        n = x_T.shape[0]

        def rhs(s: Tensor, y: Tensor) -> Tensor:
            with torch.enable_grad():
                return self._velocity(s.detach().repeat(n).requires_grad_(True), _grad_leaf(y.detach()), x0).detach()

        path = start[None] if grid.numel() == 1 else odeint(rhs, start, grid, rtol=rtol, atol=atol)
        if prepended:
            path = path[1:]
        return path.flip(0)[inverse]

    def log_density(self, t: TimeLike, x: Tensor, x0: Tensor, rtol: float = 1e-9, atol: float = 1e-9) -> Tensor:
        """C1, §8.1 step 2: ``log p_t(x | x0) = log p_T(phi_t(x | x0)) + int_t^T div f_s(x_s | x0) ds``, shape ``(n,)``.

        ``(x_s, int div f)`` is integrated forward from ``s = t`` (``x_t = x``) to ``T`` by ``odeint``
        (each row on its own clock ``s = t_i + tau (T - t_i)``, ``tau in [0, 1]``). The formula of
        §8.1 takes ``x_T = phi_t(x | x0)`` to be the *position* at ``T``, i.e. ``phi_T = id``; in
        general the position is ``X_T = phi_T^{-1}(x_T)``, whose density is
        ``p_T(x_T) |det d phi_T/d x (X_T)|``, so the terminal volume term
        ``log |det d phi_T/d x (X_T)|`` (zero when ``phi_T = id``) is added and the result is
        always the law of ``phi_t^{-1}(x_T | x0)``, ``x_T ~ p_T``. Not differentiable (detached).
        """
        t, x, x0 = self._check(t, x, x0)
        t, x, x0 = t.detach(), x.detach(), x0.detach()
        n, d = x.shape
        span = self.T - t

        def rhs(tau: Tensor, state: Tensor) -> Tensor:
            s = t + tau * span
            with torch.enable_grad():
                f, div = self._velocity_divergence(_grad_leaf(s), _grad_leaf(state[:, :d].detach()), x0)
            return torch.cat([span[:, None] * f.detach(), (span * div.detach())[:, None]], 1)

        state0 = torch.cat([x, torch.zeros(n, 1, dtype=x.dtype, device=x.device)], 1)
        tau = torch.tensor([0.0, 1.0], dtype=torch.float64, device=x.device)
        end = odeint(rhs, state0, tau, rtol=rtol, atol=atol)[-1]
        x_end, integral = end[:, :d], end[:, d]
        with torch.enable_grad():
            _, jT, _ = self._jacobians(torch.full_like(t, self.T), _grad_leaf(x_end), x0, with_time=False)
            label = self._endpoint(t, x, x0).detach()
        return self._prior(label) + integral + torch.linalg.slogdet(jT.detach())[1]


class LinearPath(Characteristic):
    """§8.1 worked example 2: ``x_t = mu_t(x0) + sigma_t x1``, ``x1 ~ p_1``, ``T = 1``, closed forms throughout.

    ``mu(t, x0) -> (n, d)`` and ``sigma(t) -> (n,)`` or ``(n, 1)`` receive ``t`` as an ``(n, 1)``
    column; ``mu_0(x0) = x0``, ``sigma_0 = 0`` and ``sigma_t > 0`` on ``(0, 1]`` (checked) are
    assumed, ``mu_1 = 0``, ``sigma_1 = 1`` are not required. ``dmu``, ``dsigma`` (same signatures)
    default to autograd in ``t``. Endpoint ``phi_t = (x - mu_t)/sigma_t``;
    ``f_t = mu'_t + (sigma'_t/sigma_t)(x - mu_t)``; ``div f = d sigma'_t/sigma_t``;
    ``p_t(x | x0) = p_1((x - mu_t)/sigma_t) / sigma_t^d``.
    """

    def __init__(
        self,
        mu: Callable[[Tensor, Tensor], Tensor],
        sigma: Callable[[Tensor], Tensor],
        prior_log_prob: LogProb,
        prior_sample: PriorSampler | None = None,
        dmu: Callable[[Tensor, Tensor], Tensor] | None = None,
        dsigma: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        for name, fn in (("mu", mu), ("sigma", sigma)):
            if not callable(fn):
                raise ValueError(f"{name} must be a callable")
        for name, fn in (("prior_sample", prior_sample), ("dmu", dmu), ("dsigma", dsigma)):
            if fn is not None and not callable(fn):
                raise ValueError(f"{name} must be a callable or None")
        super().__init__(self._linear_endpoint, prior_log_prob, T=1.0)
        self.mu, self.sigma, self.prior_sample, self.dmu, self.dsigma = mu, sigma, prior_sample, dmu, dsigma

    # ---------------------------------------------------------- coefficients
    def _mu_sigma(self, tc: Tensor, x0: Tensor) -> tuple[Tensor, Tensor]:
        n, d = x0.shape
        m = _f64(self.mu(tc, x0))
        if m.shape != (n, d):
            raise ValueError(f"mu(t, x0) must return shape {(n, d)}, got {tuple(m.shape)}")
        s = _f64(self.sigma(tc))
        if s.numel() != n:
            raise ValueError(f"sigma(t) must return {n} values (shape ({n},) or ({n}, 1)), got {tuple(s.shape)}")
        s = s.reshape(n, 1)
        if not bool((s.detach() > 0).all()):
            raise ValueError("sigma_t must be positive for t in (0, 1]")
        return m, s

    def _coefficients(self, t: Tensor, x0: Tensor, rates: bool) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """``mu_t (n, d)``, ``sigma_t (n, 1)`` and, if ``rates``, their ``t``-derivatives (autograd by default)."""
        n, d = x0.shape
        if not rates:
            return (*self._mu_sigma(t[:, None], x0), None, None)
        with torch.enable_grad():
            tc = _grad_leaf(t[:, None])
            m, s = self._mu_sigma(tc, x0)
            if self.dmu is None:
                dm = jacobian_rows(m, tc, create_graph=True)[..., 0]
            else:
                dm = _f64(self.dmu(tc, x0))
                if dm.shape != (n, d):
                    raise ValueError(f"dmu(t, x0) must return shape {(n, d)}, got {tuple(dm.shape)}")
            if self.dsigma is None:
                ds = jacobian_rows(s, tc, create_graph=True)[..., 0]
            else:
                ds = _f64(self.dsigma(tc))
                if ds.numel() != n:
                    raise ValueError(f"dsigma(t) must return {n} values, got {tuple(ds.shape)}")
                ds = ds.reshape(n, 1)
        return m, s, dm, ds

    # ------------------------------------------------------- closed forms
    def _linear_endpoint(self, t: Tensor, x: Tensor, x0: Tensor) -> Tensor:
        m, s, _, _ = self._coefficients(t, x0, rates=False)
        return (x - m) / s

    def _velocity(self, t: Tensor, x: Tensor, x0: Tensor) -> Tensor:
        m, s, dm, ds = self._coefficients(t, x0, rates=True)
        return dm + (ds / s) * (x - m)

    def _velocity_divergence(self, t: Tensor, x: Tensor, x0: Tensor) -> tuple[Tensor, Tensor]:
        m, s, dm, ds = self._coefficients(t, x0, rates=True)
        return dm + (ds / s) * (x - m), x.shape[1] * (ds / s)[:, 0]

    def _log_density_direct(self, t: Tensor, x: Tensor, x0: Tensor) -> Tensor:
        m, s, _, _ = self._coefficients(t, x0, rates=False)
        return self._prior((x - m) / s) - x.shape[1] * torch.log(s[:, 0])

    def log_density(self, t: TimeLike, x: Tensor, x0: Tensor, rtol: float = 1e-9, atol: float = 1e-9) -> Tensor:
        """Closed form ``log p_1((x - mu_t)/sigma_t) - d log sigma_t`` (``rtol``, ``atol`` unused), shape ``(n,)``."""
        return self.log_density_direct(t, x, x0)

    def sample(self, t: TimeLike, x0: Tensor, x1: Tensor | None = None, generator: rng.GeneratorLike = None) -> Tensor:
        """``x_t = mu_t(x0) + sigma_t x1`` (C2 step 2); ``x1`` defaults to ``prior_sample(n, generator)``."""
        x0 = _check_points(x0, "x0")
        if x1 is None:
            if self.prior_sample is None:
                raise ValueError("give x1 or construct the path with prior_sample")
            x1 = self.prior_sample(x0.shape[0], generator)
        t, x1, x0 = self._check(t, x1, x0)
        m, s, _, _ = self._coefficients(t, x0, rates=False)
        return m + s * x1

    def invert(
        self, t: TimeLike, x_T: Tensor, x0: Tensor, x_init: Tensor | None = None, tol: float = 1e-13, max_iter: int = 100
    ) -> Tensor:
        """Closed form ``mu_t(x0) + sigma_t x_T`` (``x_init``, ``tol``, ``max_iter`` unused)."""
        return self.sample(t, x0, x_T)

    def trajectory(self, x_T: Tensor, x0: Tensor, times: Tensor | Sequence[float], rtol: float = 1e-9, atol: float = 1e-9) -> Tensor:
        """Closed form ``x_s = mu_s(x0) + sigma_s x_T`` at ``times``, shape ``(len(times), n, d)``."""
        _, x_T, x0 = self._check(self.T, x_T, x0)
        times = _f64(times, x_T.device)
        if times.ndim != 1 or times.numel() == 0:
            raise ValueError(f"times must be a non-empty 1-D sequence, got shape {tuple(times.shape)}")
        m, (n, d) = times.shape[0], x_T.shape
        flat = self.sample(times.repeat_interleave(n), x0.repeat(m, 1), x_T.repeat(m, 1))
        return flat.reshape(m, n, d)


class StraightLine(LinearPath):
    """§8.1 worked example 1: ``x_t = (1 - t) x0 + t x1``; ``f_t(x | x0) = (x - x0)/t``, ``div f = d/t``,
    ``p_t(x | x0) = p_1((x - (1 - t) x0)/t) / t^d``."""

    def __init__(self, prior_log_prob: LogProb, prior_sample: PriorSampler | None = None) -> None:
        super().__init__(
            mu=lambda t, x0: (1.0 - t) * x0,
            sigma=lambda t: t,
            prior_log_prob=prior_log_prob,
            prior_sample=prior_sample,
            dmu=lambda t, x0: -x0,
            dsigma=lambda t: torch.ones_like(t),
        )

    def _velocity(self, t: Tensor, x: Tensor, x0: Tensor) -> Tensor:
        return (x - x0) / t[:, None]

    def _velocity_divergence(self, t: Tensor, x: Tensor, x0: Tensor) -> tuple[Tensor, Tensor]:
        return (x - x0) / t[:, None], x.shape[1] / t


class ExactField:
    """C4 (THEORY §8.2): the exact marginal density and field of weighted points ``sum_j pi_j delta(x - x_j)``.

    ``p_t(x) = sum_j pi_j p_t(x | x_j)``, flux ``sum_j pi_j p_t(x | x_j) f_t(x | x_j)`` and
    ``f_t(x) = flux / (p_t(x) + floor)``. Kernels are combined as densities (not log-sum-exp),
    so a compactly supported prior (``log p = -inf``) simply contributes zeros. The conditional
    density is ``path.log_density_direct`` (closed form for a :class:`LinearPath`). With
    ``floor = 0`` the velocity is NaN where every kernel vanishes (off a compact support).
    """

    def __init__(self, path: Characteristic, points: Tensor | Sequence, weights: Tensor | Sequence[float] | None = None, floor: float = 1e-8) -> None:
        if not isinstance(path, Characteristic):
            raise ValueError(f"path must be a Characteristic, got {type(path).__name__}")
        pts = _f64(points).detach()
        if pts.ndim == 1:
            pts = pts[:, None]
        pts = _check_points(pts, "points")
        w = torch.ones(pts.shape[0], dtype=torch.float64) if weights is None else _f64(weights).detach()
        if w.shape != (pts.shape[0],) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(f"weights must be non-negative, one per point ({pts.shape[0]}), with a positive sum")
        if not (math.isfinite(floor) and floor >= 0):
            raise ValueError(f"floor must be a finite number >= 0, got {floor}")
        self.path, self.points, self.weights, self.floor = path, pts, w / w.sum(), float(floor)

    @property
    def dim(self) -> int:
        return self.points.shape[1]

    def _pairs(self, t: TimeLike, x: Tensor) -> tuple[Tensor, Tensor, Tensor, bool]:
        x = _check_points(x, "x", self.dim)
        t = _check_times(t, x.shape[0], self.path.T, x.device)
        n, j = x.shape[0], self.points.shape[0]
        return t.repeat_interleave(j), x.repeat_interleave(j, 0), self.points.to(x.device).repeat(n, 1), _tracks(t, x)

    def _weighted_kernels(self, tr: Tensor, xr: Tensor, x0: Tensor) -> Tensor:
        """``pi_j p_t(x | x_j)``, shape ``(n, J)``."""
        j = self.points.shape[0]
        log_k = self.path._log_density_direct(tr, xr, x0).reshape(-1, j)
        return self.weights.to(xr.device)[None] * torch.exp(log_k)

    def density(self, t: TimeLike, x: Tensor) -> Tensor:
        """``p_t(x) = sum_j pi_j p_t(x | x_j)``, shape ``(n,)``."""
        tr, xr, x0, track = self._pairs(t, x)
        with torch.enable_grad():
            out = self._weighted_kernels(_grad_leaf(tr), _grad_leaf(xr), x0).sum(-1)
        return _finish(out, track)

    def _flux_density(self, tr: Tensor, xr: Tensor, x0: Tensor) -> tuple[Tensor, Tensor]:
        k = self._weighted_kernels(tr, xr, x0)
        f = self.path._velocity(tr, xr, x0).reshape(*k.shape, -1)
        return (k[..., None] * f).sum(1), k.sum(-1)

    def flux(self, t: TimeLike, x: Tensor) -> Tensor:
        """``p_t f_t = sum_j pi_j p_t(x | x_j) f_t(x | x_j)`` (no floor), shape ``(n, d)``."""
        tr, xr, x0, track = self._pairs(t, x)
        with torch.enable_grad():
            out = self._flux_density(_grad_leaf(tr), _grad_leaf(xr), x0)[0]
        return _finish(out, track)

    def velocity(self, t: TimeLike, x: Tensor) -> Tensor:
        """C4: ``f_t(x) = sum_j pi_j p_t(x|x_j) f_t(x|x_j) / (sum_j pi_j p_t(x|x_j) + floor)``, shape ``(n, d)``."""
        tr, xr, x0, track = self._pairs(t, x)
        with torch.enable_grad():
            flux, dens = self._flux_density(_grad_leaf(tr), _grad_leaf(xr), x0)
            out = flux / (dens + self.floor)[:, None]
        return _finish(out, track)


__all__ = [
    "Characteristic",
    "ExactField",
    "LinearPath",
    "StraightLine",
    "continuity_residual",
]
