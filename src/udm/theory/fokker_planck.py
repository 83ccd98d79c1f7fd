"""Numerical checkers of the continuity and Fokker-Planck equations (THEORY §9.1-§9.3).

§9.1 derives, from an Euler(-Maruyama) step and the test-function principle, that
x_t with dx = f_t(x) dt + g_t dw has marginals p_t that obey, for every smooth phi,

    d/dt E[phi(x_t)] = E[f_t . grad phi + 1/2 g_t^2 Lap phi]         (weak form)

and, after integrating by parts, d_t p = -div(p f) + 1/2 g^2 Lap p (strong form;
g = 0 gives the continuity equation). §9.2 asks for three verification utilities:

* W1 :func:`weak_form_check` - needs only a sampler of p_t and the drift: compares
  both sides of the weak form for a family of test functions (:func:`test_functions`)
  and reports max_k |LHS_k - RHS_k| / SE_k against a Bonferroni normal quantile;
* W2 :func:`strong_form_residual`, :func:`strong_form_check` - needs the density:
  the pointwise residual d_t p + div(p f) - 1/2 g^2 Lap p by autograd, relative to
  the size of the terms that cancel;
* W3 :func:`integration_by_parts_check` - int v . grad p = -int p div v by
  quadrature, a self-test of the autograd operators (:func:`gradient`,
  :func:`divergence`, :func:`laplacian`) that W1 and W2 rely on.

All arithmetic is float64.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import torch

from .. import rng
from .continuity import Residual, exact_divergence, jacobian_rows, row_gradient, space_time_divergence

Tensor = torch.Tensor
TimeLike = float | Tensor
Sampler = Callable[[float, int, rng.GeneratorLike], Tensor]
Drift = Callable[[TimeLike, Tensor], Tensor]
Diffusion = float | Callable[[TimeLike], Tensor | float]
Density = Callable[[Tensor, Tensor], Tensor]
FAMILIES = ("bumps", "fourier", "polynomial")
_EPS = torch.finfo(torch.float64).eps
#: Below this many effective particles a W1 z-score is not trusted (CheckResult.underpowered): the CLT needs many.
MIN_EFFECTIVE_N = 30.0
#: The power at which :attr:`CheckResult.detectable` is quoted.
POWER = 0.8
#: A W1 check that cannot detect an error of this fraction of its transport terms (with power :data:`POWER`) is underpowered.
MAX_DETECTABLE = 0.5


# --- results -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: ``statistic`` is compared with ``threshold`` (``passed`` iff below).

    W1: lhs, rhs, stderr are per test function (K,) and statistic = max_k |lhs - rhs| / stderr;
    ``effective_n`` = min_k (sum_i Z_ik^2)^2 / sum_i Z_ik^4 over the centred per-particle
    differences Z, the number of particles that carry the variance (n for equal
    contributions, ~1 when one particle dominates); ``scale`` (K,) = |E f . grad phi_k| +
    |E 1/2 g^2 Lap phi_k|, the size of the transport terms whose sum is rhs.
    W2: lhs = d_t p and rhs = -div(p f) + 1/2 g^2 Lap p per point; statistic = max relative residual.
    W3: lhs = int v . grad p, rhs = -int p div v; statistic = |lhs - rhs| / int(|v . grad p| + |p div v|).

    ``passed`` is the raw comparison; :attr:`verdict` is what to report: a W1 check
    without the power to tell a right field from a wrong one (:attr:`underpowered`) is
    neither a pass nor a failure (THEORY §9.2, W1).
    """

    name: str
    statistic: float
    threshold: float
    passed: bool
    lhs: Tensor
    rhs: Tensor
    stderr: Tensor | None = None
    check: str = "W1"
    t: float | None = None
    effective_n: float | None = None
    scale: Tensor | None = None
    n: int | None = None

    @property
    def detectable(self) -> float | None:
        """The smallest error the check detects with probability :data:`POWER`, as a fraction of the transport terms.

        A drift or diffusion that is wrong by a fraction rho of its term moves
        lhs_k - rhs_k by about rho scale_k; the Bonferroni z-test rejects that with
        probability POWER when rho scale_k >= (threshold + z_POWER) stderr_k for some k,
        so this is min_k (threshold + z_POWER) stderr_k / scale_k. It shrinks like 1/sqrt(n).
        """
        if self.stderr is None or self.scale is None:
            return None
        ratio = (self.threshold + NormalDist().inv_cdf(POWER)) * self.stderr / self.scale.clamp_min(torch.finfo(torch.float64).tiny)
        return float(ratio.min())

    @property
    def underpowered(self) -> bool:
        """True when the W1 verdict means nothing at this n: too few effective particles, or no power to see a large error.

        Below :data:`MIN_EFFECTIVE_N` effective particles the standard error (and so the
        z-score) is unreliable and a correct field can score z ~ 10; above
        :data:`MAX_DETECTABLE` even an error of half the transport terms goes unseen.
        """
        few = self.effective_n is not None and self.effective_n < MIN_EFFECTIVE_N
        weak = self.passed and self.detectable is not None and self.detectable > MAX_DETECTABLE
        return few or weak

    @property
    def needed_n(self) -> int | None:
        """About how many particles the check needs to have power (None when it has it, or for W2/W3).

        The effective count grows like n and :attr:`detectable` shrinks like 1/sqrt(n), so
        n max(MIN_EFFECTIVE_N / effective_n, (detectable / MAX_DETECTABLE)^2), with a margin of 2 (the
        effective count of a small sample is itself noisy), rounded up to thousands.
        """
        if not self.underpowered or self.n is None:
            return None
        factor = 1.0
        if self.effective_n is not None:
            factor = max(factor, MIN_EFFECTIVE_N / max(self.effective_n, 1.0))
        if self.detectable is not None:
            factor = max(factor, (self.detectable / MAX_DETECTABLE) ** 2)
        return int(math.ceil(2.0 * factor * self.n / 1000.0) * 1000)

    @property
    def verdict(self) -> str:
        """``"pass"``, ``"FAIL"`` or ``"underpowered"`` (an inconclusive W1 check, whatever its statistic)."""
        if self.underpowered:
            return "underpowered"
        return "pass" if self.passed else "FAIL"

    @property
    def warning(self) -> str:
        """Non-empty when W1 is underpowered: why, and how many particles it needs."""
        if not self.underpowered:
            return ""
        if self.effective_n is not None and self.effective_n < MIN_EFFECTIVE_N:
            why = f"SE rests on ~{self.effective_n:.0f} particles"
        else:
            why = f"blind to errors below {100 * self.detectable:.0f}% of the terms"
        hint = f"raise n to ~{self.needed_n}" if self.needed_n is not None else "raise n"
        return f"{why}: {hint} (or check where the kernels overlap)"

    def row(self) -> tuple[str, str, str, str, str, str]:
        """(case, check, t, statistic, threshold, verdict) as strings, for :func:`udm.checks.format_table`."""
        t = "-" if self.t is None else f"{self.t:.4g}"
        return self.name, self.check, t, f"{self.statistic:.3g}", f"{self.threshold:.3g}", self.verdict

    def __str__(self) -> str:
        case, check, t, stat, thr, verdict = self.row()
        return f"{case} {check} t={t}: statistic {stat} vs threshold {thr}: {verdict}"


# --- autograd operators (validated by W3) ---------------------------------------------------------
def _leaf(x: Tensor) -> Tensor:
    """x itself when it is already on a graph (so derivatives chain), else a float64 leaf that requires grad."""
    return x if x.requires_grad else x.detach().to(torch.float64).requires_grad_(True)


def gradient(fn: Callable[[Tensor], Tensor], x: Tensor, *, create_graph: bool = False) -> Tensor:
    """grad_x fn at the rows of x by autograd: (n,) outputs give (n, d), (n, K) outputs give (n, K, d).

    ``fn`` must act row by row (a field evaluated at n points). When x already requires
    grad the derivative is taken along its graph, so callers can differentiate again.
    """
    with torch.enable_grad():
        xx = _leaf(x)
        out = fn(xx)
        cols = out[:, None] if out.ndim == 1 else out
        g = jacobian_rows(cols, xx, create_graph=create_graph)
    g = g if create_graph else g.detach()
    return g[:, 0] if out.ndim == 1 else g


def divergence(v: Callable[[Tensor], Tensor], x: Tensor, *, create_graph: bool = False) -> Tensor:
    """div v = sum_i d v_i / d x_i at the rows of x by autograd, shape (n,); v maps (n, d) to (n, d)."""
    with torch.enable_grad():
        xx = _leaf(x)
        out = v(xx)
        div = exact_divergence(out, xx, create_graph=create_graph)
    return div if create_graph else div.detach()


def laplacian(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Lap fn = div grad fn by autograd: (n,) outputs give (n,), (n, K) outputs give (n, K)."""
    with torch.enable_grad():
        xx = _leaf(x)
        g = gradient(fn, xx, create_graph=True)
        cols = g[:, None] if g.ndim == 2 else g
        lap = torch.stack([exact_divergence(cols[:, k], xx) for k in range(cols.shape[1])], 1)
    lap = lap.detach()
    return lap[:, 0] if g.ndim == 2 else lap


# --- test functions (W1 step 2) --------------------------------------------------------------------
class TestFunctions:
    """K smooth test functions phi_k: R^d -> R (THEORY §9.1 test-function principle, §9.2 W1 step 2).

    Calling gives phi values (n, K); :meth:`grad` gives (n, K, d) and :meth:`laplacian`
    (n, K). The base class wraps any row-wise ``fn`` and differentiates it by autograd;
    the built-in families override both with closed forms.
    """

    __test__ = False  # a library class, not a pytest test class
    kind = "custom"

    def __init__(self, dim: int, count: int, fn: Callable[[Tensor], Tensor] | None = None) -> None:
        if dim < 1 or count < 1:
            raise ValueError(f"need dim >= 1 and count >= 1, got dim={dim}, count={count}")
        self.dim, self.count, self._fn = int(dim), int(count), fn

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, dim={self.dim}, count={self.count})"

    def _check(self, x: Tensor) -> Tensor:
        x = torch.as_tensor(x, dtype=torch.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"test functions on R^{self.dim} need x of shape (n, {self.dim}), got {tuple(x.shape)}")
        return x

    def __call__(self, x: Tensor) -> Tensor:
        if self._fn is None:
            raise NotImplementedError("TestFunctions needs fn, or a subclass with closed forms")
        return self._fn(self._check(x))

    def grad(self, x: Tensor) -> Tensor:
        """grad phi_k(x), shape (n, K, d)."""
        return gradient(self, self._check(x))

    def laplacian(self, x: Tensor) -> Tensor:
        """Lap phi_k(x), shape (n, K)."""
        return laplacian(self, self._check(x))


class Bumps(TestFunctions):
    """Gaussian bumps phi_k(x) = exp(-|x - c_k|^2 / (2 w_k^2)): local probes of the density."""

    kind = "bumps"

    def __init__(self, centers: Tensor, widths: Tensor) -> None:
        centers, widths = torch.as_tensor(centers, dtype=torch.float64), torch.as_tensor(widths, dtype=torch.float64)
        if centers.ndim != 2 or widths.shape != (centers.shape[0],) or bool((widths <= 0).any()):
            raise ValueError(f"need centers (K, d) and positive widths (K,), got {tuple(centers.shape)} and {tuple(widths.shape)}")
        super().__init__(centers.shape[1], centers.shape[0])
        self.centers, self.widths = centers, widths

    def _parts(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        diff = self._check(x)[:, None, :] - self.centers.to(x.device)[None]  # (n, K, d)
        w2 = (self.widths.to(x.device) ** 2)[None]
        return diff, w2, torch.exp(-0.5 * (diff * diff).sum(-1) / w2)

    def __call__(self, x: Tensor) -> Tensor:
        return self._parts(x)[2]

    def grad(self, x: Tensor) -> Tensor:
        diff, w2, phi = self._parts(x)
        return -(phi / w2)[..., None] * diff

    def laplacian(self, x: Tensor) -> Tensor:
        diff, w2, phi = self._parts(x)
        return ((diff * diff).sum(-1) / w2 - self.dim) / w2 * phi


class FourierFeatures(TestFunctions):
    """Random Fourier features phi_k(x) = cos(omega_k . (x - c) + b_k): global, bounded probes."""

    kind = "fourier"

    def __init__(self, omegas: Tensor, phases: Tensor, center: Tensor | float = 0.0) -> None:
        omegas, phases = torch.as_tensor(omegas, dtype=torch.float64), torch.as_tensor(phases, dtype=torch.float64)
        if omegas.ndim != 2 or phases.shape != (omegas.shape[0],):
            raise ValueError(f"need omegas (K, d) and phases (K,), got {tuple(omegas.shape)} and {tuple(phases.shape)}")
        super().__init__(omegas.shape[1], omegas.shape[0])
        self.omegas, self.phases = omegas, phases
        self.center = torch.as_tensor(center, dtype=torch.float64).expand(self.dim)

    def _angle(self, x: Tensor) -> Tensor:
        x = self._check(x)
        return (x - self.center.to(x.device)) @ self.omegas.to(x.device).T + self.phases.to(x.device)

    def __call__(self, x: Tensor) -> Tensor:
        return torch.cos(self._angle(x))

    def grad(self, x: Tensor) -> Tensor:
        return -torch.sin(self._angle(x))[..., None] * self.omegas.to(x.device)[None]

    def laplacian(self, x: Tensor) -> Tensor:
        return -(self.omegas.to(x.device) ** 2).sum(-1)[None] * torch.cos(self._angle(x))


class Monomials(TestFunctions):
    """Low-order polynomials phi_k(x) = prod_i z_i^{a_ki} with z = (x - c) / s (constants excluded: they test nothing)."""

    kind = "polynomial"

    def __init__(self, exponents: Tensor | Sequence[Sequence[int]], center: Tensor | float = 0.0, scale: Tensor | float = 1.0) -> None:
        a = torch.as_tensor(exponents, dtype=torch.int64)
        if a.ndim != 2 or bool((a < 0).any()) or bool((a.sum(1) == 0).any()):
            raise ValueError("exponents must be (K, d) non-negative integers with no all-zero row")
        super().__init__(a.shape[1], a.shape[0])
        self.exponents = a
        self.center = torch.as_tensor(center, dtype=torch.float64).expand(self.dim)
        self.scale = torch.as_tensor(scale, dtype=torch.float64).expand(self.dim)

    def _z(self, x: Tensor) -> Tensor:
        x = self._check(x)
        return ((x - self.center.to(x.device)) / self.scale.to(x.device))[:, None, :]  # (n, 1, d)

    @staticmethod
    def _power(z: Tensor, a: Tensor) -> Tensor:
        """z^a with z^0 = 1 and z^(negative) = 0 (the derivative of a constant)."""
        return torch.where(a >= 0, z ** a.clamp_min(0).to(z.dtype), torch.zeros_like(z))

    def __call__(self, x: Tensor) -> Tensor:
        return self._power(self._z(x), self.exponents.to(x.device)[None]).prod(-1)

    def _derivative(self, x: Tensor, i: int, order: int) -> Tensor:
        """d^order phi_k / d x_i^order, shape (n, K)."""
        z, a = self._z(x), self.exponents.to(x.device)
        shift = torch.zeros_like(a)
        shift[:, i] = order
        coef = torch.ones(a.shape[0], dtype=torch.float64, device=x.device)
        for j in range(order):
            coef = coef * (a[:, i] - j).to(torch.float64)
        return coef[None] * self._power(z, (a - shift)[None]).prod(-1) / float(self.scale[i]) ** order

    def grad(self, x: Tensor) -> Tensor:
        return torch.stack([self._derivative(x, i, 1) for i in range(self.dim)], -1)

    def laplacian(self, x: Tensor) -> Tensor:
        return sum(self._derivative(x, i, 2) for i in range(self.dim))


def monomial_exponents(dim: int, degree: int) -> list[tuple[int, ...]]:
    """All exponent tuples a in N^d with 1 <= |a| <= degree, by degree then lexicographically (reversed)."""
    return [a for k in range(1, degree + 1) for a in sorted(itertools.product(range(k + 1), repeat=dim), reverse=True) if sum(a) == k]


def test_functions(
    kind: str,
    dim: int,
    count: int = 16,
    generator: rng.GeneratorLike = None,
    *,
    center: Tensor | float = 0.0,
    scale: Tensor | float = 1.0,
    degree: int = 2,
    anchors: Tensor | None = None,
) -> TestFunctions:
    """A family of test functions placed at ``center`` with length ``scale`` (a float or per coordinate).

    * ``bumps``: ``count`` centres c_k drawn from the rows of ``anchors`` when given (points
      where the density has mass), else c_k = center + scale z_k, z_k ~ N(0, I); widths
      w_k = mean(scale) U(0.3, 1);
    * ``fourier``: omega_k = z_k / scale, b_k ~ U(0, 2 pi);
    * ``polynomial``: the monomials of z = (x - center) / scale of degree 1..``degree``
      (at most ``count`` of them).
    """
    if kind not in FAMILIES:
        raise ValueError(f"unknown test-function family {kind!r}; valid: {', '.join(FAMILIES)}")
    gen = rng.as_generator(generator)
    c = torch.as_tensor(center, dtype=torch.float64).expand(dim).clone()
    s = torch.as_tensor(scale, dtype=torch.float64).expand(dim).clone()
    if bool((s <= 0).any()):
        raise ValueError(f"scale must be positive, got {s.tolist()}")
    if kind == "polynomial":
        if degree < 1:
            raise ValueError(f"degree must be >= 1, got {degree}")
        return Monomials(monomial_exponents(dim, degree)[:count], c, s)
    z = rng.randn((count, dim), gen, dtype=torch.float64)
    u = rng.rand((count,), gen, dtype=torch.float64)
    if kind == "bumps":
        if anchors is not None:
            anchors = torch.as_tensor(anchors, dtype=torch.float64)
            if anchors.ndim != 2 or anchors.shape[1] != dim or anchors.shape[0] < 1:
                raise ValueError(f"anchors must be (m, {dim}) points with m >= 1, got {tuple(anchors.shape)}")
            pick = (rng.rand((count,), gen, dtype=torch.float64) * anchors.shape[0]).long().clamp_max(anchors.shape[0] - 1)
            return Bumps(anchors[pick], s.mean() * (0.3 + 0.7 * u))
        return Bumps(c + s * z, s.mean() * (0.3 + 0.7 * u))
    return FourierFeatures(z / s, 2 * math.pi * u, c)


def robust_location_scale(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-coordinate median and 1.4826 x median absolute deviation: a centre and a length that heavy tails (Cauchy) do not break."""
    x = torch.as_tensor(x, dtype=torch.float64)
    med = x.median(0).values
    mad = 1.4826 * (x - med).abs().median(0).values
    return med, mad.clamp_min(1e-12 * float(mad.max().clamp_min(1.0)))


def fit_test_functions(kind: str, x: Tensor, count: int = 16, generator: rng.GeneratorLike = None, *, degree: int = 2) -> TestFunctions:
    """:func:`test_functions` placed at the scale of the sample x (its median and MAD).

    Bump centres are drawn from the denser half of the sample (points whose distance to
    their 32nd nearest neighbour is below the median). A bump where the density has
    little mass is hit by a handful of particles, and the mean of such a sparse variable
    is far from normal, which would break the z-score of W1 (found on the heavy-tailed
    kernels of :mod:`udm.checks`, where such bumps gave z ~ 10 for a correct field).
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    center, scale = robust_location_scale(x)
    return test_functions(kind, x.shape[1], count, generator, center=center, scale=scale, degree=degree, anchors=dense_half(x))


def dense_half(x: Tensor, neighbours: int = 32, limit: int = 1024) -> Tensor:
    """The rows of x (its first ``limit``) whose distance to their ``neighbours``-th nearest neighbour is at most the median."""
    pts = torch.as_tensor(x, dtype=torch.float64)[:limit]
    k = min(neighbours, pts.shape[0] - 1)
    if k < 1:
        return pts
    radius = torch.cdist(pts, pts).kthvalue(k + 1, dim=1).values  # the point itself is the first
    return pts[radius <= radius.median()]


# --- W1: the weak-form checker ----------------------------------------------------------------------
def bonferroni_threshold(count: int, alpha: float = 0.01) -> float:
    """z_{1 - alpha / (2 K)}: under the null, P(max_k |Z_k| > it) <= alpha for K roughly standard-normal Z_k.

    The union bound needs no independence (the K test functions are correlated), so
    the level is conservative. K = 16, alpha = 0.01 gives 3.42.
    """
    if count < 1 or not 0 < alpha < 1:
        raise ValueError(f"need count >= 1 and 0 < alpha < 1, got count={count}, alpha={alpha}")
    return NormalDist().inv_cdf(1.0 - alpha / (2.0 * count))


def default_step(t: float) -> float:
    """The half-step h = 1e-7 max(|t|, 1e-2) of the central difference in W1.

    The central difference has truncation error h^2/6 |d_t^3 E phi|. With common random
    numbers each particle's difference quotient tends to d/dt phi(x_t) as h -> 0, so its
    variance does not grow as h shrinks and h can be tiny; the floor is round-off, about
    eps |phi| / h ~ 1e-9 per particle here. What sets h is the particle farthest in a heavy
    tail: with a Cauchy kernel (gravity) one of 2e4 particles moves at speed |dx/dt| ~ 1e4,
    and a Fourier feature's quotient sin(h omega . v) / h is accurate only while
    h |omega . v| << 1; at h = 1e-5 t that particle alone carried the variance. Pass ``h``
    when t is not the natural time scale of the process; W1 also estimates the truncation
    error itself (Richardson) and adds it to the standard error.
    """
    return 1e-7 * max(abs(float(t)), 1e-2)


def simulated_sampler(
    sample_0: Callable[[int, rng.GeneratorLike], Tensor], drift: Drift, g2: Diffusion, t0: float = 0.0, steps: int = 400
) -> Sampler:
    """A sampler of p_t by Euler-Maruyama from p_t0 (THEORY §9.2 W1 step 1, "or Euler-Maruyama from p_0").

    ``sample(t, n, generator)`` draws x_t0 ~ ``sample_0(n, generator)`` and takes ``steps``
    equal steps x += f dt + sqrt(g^2 dt) eps to t, drawing everything from the generator
    in one fixed order, so one seed gives coupled paths at nearby times: the common random
    numbers of :func:`weak_form_check`. The marginal carries Euler-Maruyama's O(1/steps) weak
    error. W1 on such particles checks a *second* field against the simulated one, e.g. the
    probability-flow ODE (g = 0) against particles of its SDE: both must transport the same
    marginals. The simulating field itself passes by construction.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")

    def sample(t: float, n: int, generator: rng.GeneratorLike = None) -> Tensor:
        gen = rng.as_generator(generator)
        x = _as_points(sample_0(n, gen), "sample_0(n, generator)")
        dt = (float(t) - t0) / steps
        for k in range(steps):
            tk = t0 + k * dt
            noise = rng.randn(tuple(x.shape), gen, dtype=torch.float64)
            x = x + torch.as_tensor(drift(tk, x), dtype=torch.float64) * dt + torch.sqrt(diffusion_value(g2, tk) * abs(dt)) * noise
        return x

    return sample


def _as_points(x: Tensor, what: str) -> Tensor:
    x = torch.as_tensor(x).to(torch.float64)
    if x.ndim != 2:
        raise ValueError(f"{what} must return points of shape (n, d), got {tuple(x.shape)}")
    return x


def diffusion_value(g2: Diffusion, t: TimeLike) -> Tensor:
    """g_t^2 as a float64 tensor (a number, or ``g2(t)``); shape () for a scalar t, (n,) for an (n,) t."""
    tt = torch.as_tensor(t, dtype=torch.float64)
    value = torch.as_tensor(g2(t) if callable(g2) else g2, dtype=torch.float64)
    return value.expand(tt.shape) if value.ndim == 0 else value


def weak_form_check(
    sample: Sampler,
    drift: Drift,
    g2: Diffusion,
    t: float,
    phis: TestFunctions | str = "bumps",
    *,
    n: int = 20000,
    h: float | None = None,
    seed: int = 0,
    count: int = 16,
    alpha: float = 0.01,
    common_random_numbers: bool = True,
    name: str = "field",
) -> CheckResult:
    """W1 (THEORY §9.2): does d/dt E[phi_k(x_t)] = E[f_t . grad phi_k + 1/2 g_t^2 Lap phi_k] for every k?

    ``sample(t, n, generator)`` draws n i.i.d. rows of p_t (float64, (n, d)); ``drift(t, x)``
    is f_t at the rows of x; ``g2`` is g_t^2 (a number or a function of t; 0 for an ODE).
    ``phis`` is a :class:`TestFunctions` or a family name, then fitted (:func:`fit_test_functions`)
    to an independent pilot sample at t.

    * LHS_k = (E phi_k(x_{t+h}) - E phi_k(x_{t-h})) / (2h), the samples at t - h, t, t + h
      all drawn with one seed (common random numbers). For a reparameterized sampler
      x_t = F_t(x0, eps) each particle's quotient is then ~ d/dt phi_k(F_t(x0, eps)), an O(1)
      quantity instead of O(1/h) noise.
    * RHS_k = E[f_t . grad phi_k + 1/2 g_t^2 Lap phi_k] over the same particles at t.
    * SE_k: with common random numbers, the standard error of the per-particle difference
      (quotient - integrand), which is what the paired estimate LHS_k - RHS_k averages
      (rows are i.i.d. whatever the coupling, so this is valid for any sampler; the coupling
      only lowers the variance). Without them the variances of independent samples add.
      Added in quadrature: the truncation error, estimated as |LHS(2h) - LHS(h)| / 3
      (Richardson: the error is c h^2), and round-off eps mean|phi| / h.

    statistic = max_k |LHS_k - RHS_k| / SE_k, threshold = :func:`bonferroni_threshold` (K, alpha):
    a correct field fails with probability <= alpha; a wrong one gives a statistic that grows like sqrt(n).

    Limits: the z-scores need the paired differences to be well sampled. With point-mass
    data at small t, where the kernels of distinct sources barely overlap, the differences
    vanish except on rare particles between sources; the SE then rests on a few particles,
    is underestimated when they are absent, and a correct field can score z ~ 10.
    ``CheckResult.effective_n`` measures this (below :data:`MIN_EFFECTIVE_N` the result is
    underpowered, :attr:`CheckResult.verdict`): check at times where the kernels overlap, or
    raise n. A pass proves little when n is small: :attr:`CheckResult.detectable` is the
    smallest error the check sees with 80% power, relative to ``scale`` = |LHS_k| + |E f . grad phi_k|
    + |E 1/2 g^2 Lap phi_k|, the sizes of the weak form's terms (as W2 measures the strong
    form's), and a pass that cannot see an error of half of them is underpowered too. For
    kernels without a finite variance (Cauchy) use test functions whose gradient decays
    fast (bumps): polynomial means do not exist there.
    """
    t, n = float(t), int(n)
    h = default_step(t) if h is None else float(h)
    if n < 2 or h <= 0:
        raise ValueError(f"need n >= 2 particles and h > 0, got n={n}, h={h}")

    def draw(time: float, stream: int) -> Tensor:
        gen = torch.Generator().manual_seed(seed if common_random_numbers else seed + 1 + stream)
        x = _as_points(sample(time, n, gen), "sample(t, n, generator)")
        if x.shape[0] != n:
            raise ValueError(f"sample(t, n, generator) returned {x.shape[0]} points, expected n = {n}")
        return x

    x = draw(t, 0)
    if isinstance(phis, str):
        pilot = _as_points(sample(t, min(n, 4096), torch.Generator().manual_seed(seed + 7919)), "sample(t, n, generator)")
        phis = fit_test_functions(phis, pilot, count, torch.Generator().manual_seed(seed + 104729))
    f = torch.as_tensor(drift(t, x), dtype=torch.float64)
    if f.shape != x.shape:
        raise ValueError(f"drift(t, x) must return shape {tuple(x.shape)}, got {tuple(f.shape)}")
    transport = (f[:, None, :] * phis.grad(x)).sum(-1)  # (n, K)
    diffusion = 0.5 * diffusion_value(g2, t) * phis.laplacian(x)
    integrand = transport + diffusion

    values = {k: phis(draw(t + k * h, k)) for k in (-2, -1, 1, 2)}
    quotient = (values[1] - values[-1]) / (2 * h)  # (n, K)
    wide = (values[2] - values[-2]) / (4 * h)
    lhs, rhs = quotient.mean(0), integrand.mean(0)
    scale = lhs.abs() + transport.mean(0).abs() + diffusion.mean(0).abs()
    if common_random_numbers:
        paired = quotient - integrand
        var = paired.var(0) / n
    else:
        paired = torch.cat([values[1] / (2 * h), -values[-1] / (2 * h), -integrand])
        var = (values[1].var(0) + values[-1].var(0)) / (4 * h * h * n) + integrand.var(0) / n
    truncation = (wide.mean(0) - lhs).abs() / 3.0
    roundoff = _EPS * values[1].abs().mean(0) / h
    stderr = torch.sqrt(var + truncation**2 + roundoff**2)
    z = (lhs - rhs).abs() / stderr.clamp_min(torch.finfo(torch.float64).tiny)
    statistic = float(z.max())
    threshold = bonferroni_threshold(phis.count, alpha)
    return CheckResult(name, statistic, threshold, statistic < threshold, lhs, rhs, stderr, f"W1/{phis.kind}", t, effective_count(paired),
                       scale, n)


def effective_count(z: Tensor) -> float:
    """min over columns of (sum_i c_i^2)^2 / sum_i c_i^4, c = z - mean: how many rows carry each column's variance.

    The kurtosis-based effective sample size of a variance estimate. When a few rare
    particles dominate (sources whose kernels barely overlap: at small t the paired
    differences vanish except between sources), the SE and the normal approximation of W1
    are unreliable, however large n is.
    """
    c = z - z.mean(0)
    m2, m4 = (c * c).sum(0), (c**4).sum(0)
    ratio = torch.where(m4 > 0, m2 * m2 / m4.clamp_min(torch.finfo(torch.float64).tiny), torch.full_like(m2, float(z.shape[0])))
    return float(ratio.min())


# --- W2: the strong-form residual -------------------------------------------------------------------
def _times(t: TimeLike, x: Tensor) -> Tensor:
    tt = torch.as_tensor(t, dtype=torch.float64, device=x.device)
    if tt.ndim == 0:
        return tt.expand(x.shape[0])
    if tt.shape != (x.shape[0],):
        raise ValueError(f"t must be a scalar or have shape ({x.shape[0]},), got {tuple(tt.shape)}")
    return tt


def strong_form_residual(density: Density, drift: Drift, g2: Diffusion, t: TimeLike, x: Tensor) -> Residual:
    """W2 (THEORY §9.2): r = d_t p + div(p f) - 1/2 g^2 Lap p at the rows of x, by autograd.

    The Fokker-Planck equation says u = (p, p f - 1/2 g^2 grad p) is divergence-free in
    (t, x) (§9.1, SDE step 4). Two space-time divergences are taken, of (p, p f) and of
    (0, -1/2 g^2 grad p), so that the scale |d_t p| + sum_i |d_i(p f_i)| + 1/2 g^2 sum_i |d_ii p|
    counts the drift and the diffusion terms separately: they cancel each other near a
    stationary law (VP at large t) and one combined flux would hide their size.
    ``density(t, x)`` and ``drift(t, x)`` receive t of shape (n,) and must be differentiable.
    """
    x = _as_points(torch.as_tensor(x), "x")
    tt = _times(t, x)

    def transport(ts: Tensor, xs: Tensor) -> tuple[Tensor, Tensor]:
        p = density(ts, xs)
        return p, p[:, None] * drift(ts, xs)

    first = space_time_divergence(transport, tt, x)
    if not callable(g2) and float(g2) == 0.0:
        return first

    def diffusion(ts: Tensor, xs: Tensor) -> tuple[Tensor, Tensor]:
        grad_p = gradient(lambda y: density(ts, y), xs, create_graph=True)
        return 0.0 * ts, -0.5 * diffusion_value(g2, ts)[:, None] * grad_p

    second = space_time_divergence(diffusion, tt, x)
    return Residual(first.residual + second.residual, first.scale + second.scale)


def time_derivative(density: Density, t: TimeLike, x: Tensor) -> Tensor:
    """d_t p_t(x) at the rows of x by autograd, shape (n,)."""
    x = _as_points(torch.as_tensor(x), "x").detach()
    with torch.enable_grad():
        tt = _times(t, x).detach().clone().requires_grad_(True)
        dt = row_gradient(density(tt, x), tt)
    return dt.detach()


def strong_form_check(
    density: Density, drift: Drift, g2: Diffusion, t: TimeLike, x: Tensor, *, tol: float = 1e-6, name: str = "field"
) -> CheckResult:
    """W2 as a pass/fail check: max over the rows of x of the relative residual, against ``tol``.

    In float64 a correct density-drift pair gives ~1e-12 to 1e-9 (autograd round-off in
    the cancelling terms); a wrong drift gives O(1). lhs = d_t p, rhs = -div(p f) + 1/2 g^2 Lap p.
    """
    res = strong_form_residual(density, drift, g2, t, x)
    lhs = time_derivative(density, t, x)
    statistic = float(res.relative.max())
    tval = torch.as_tensor(t, dtype=torch.float64)
    return CheckResult(name, statistic, tol, statistic < tol, lhs, lhs - res.residual, None, "W2", float(tval) if tval.ndim == 0 else None)


# --- W3: integration by parts -------------------------------------------------------------------------
def trapezoid_grid(dim: int, bound: float, points: int) -> tuple[Tensor, Tensor]:
    """A tensor-product trapezoid rule on [-bound, bound]^dim: nodes (points^dim, dim) and weights.

    For integrands that vanish with all derivatives at the boundary the rule converges
    geometrically (it is then the periodic trapezoid rule).
    """
    if dim not in (1, 2):
        raise ValueError(f"the quadrature self-test runs in d = 1 or 2, got d = {dim}")
    if points < 3 or bound <= 0:
        raise ValueError(f"need points >= 3 and bound > 0, got points={points}, bound={bound}")
    s = torch.linspace(-bound, bound, points, dtype=torch.float64)
    w = torch.full((points,), 2 * bound / (points - 1), dtype=torch.float64)
    w[0] = w[-1] = 0.5 * w[0]
    if dim == 1:
        return s[:, None], w
    a, b = torch.meshgrid(s, s, indexing="ij")
    return torch.stack([a.reshape(-1), b.reshape(-1)], 1), (w[:, None] * w[None, :]).reshape(-1)


def integration_by_parts_check(
    p: Callable[[Tensor], Tensor],
    v: Callable[[Tensor], Tensor],
    dim: int,
    *,
    bound: float = 6.0,
    points: int | None = None,
    tol: float = 1e-6,
    name: str = "ibp",
) -> CheckResult:
    """W3 (THEORY §9.1-§9.2): int v . grad p = -int p div v by quadrature, d = 1 or 2.

    grad p and div v come from :func:`gradient` and :func:`divergence`, the operators of W1
    and W2; the boundary term vanishes when p v decays inside [-bound, bound]^d. statistic
    is |lhs - rhs| over int |v . grad p| + int |p div v| (robust when both sides are ~0).
    """
    x, w = trapezoid_grid(dim, bound, points or (2001 if dim == 1 else 241))
    lhs_density = (v(x).detach() * gradient(p, x)).sum(1)
    rhs_density = -p(x).detach() * divergence(v, x)
    lhs, rhs = (w * lhs_density).sum(), (w * rhs_density).sum()
    scale = (w * lhs_density.abs()).sum() + (w * rhs_density.abs()).sum()
    statistic = float((lhs - rhs).abs() / scale.clamp_min(torch.finfo(torch.float64).tiny))
    return CheckResult(name, statistic, tol, statistic < tol, lhs, rhs, None, f"W3/{dim}d", None)


__all__ = [
    "FAMILIES",
    "Bumps",
    "CheckResult",
    "FourierFeatures",
    "Monomials",
    "TestFunctions",
    "bonferroni_threshold",
    "default_step",
    "MAX_DETECTABLE",
    "MIN_EFFECTIVE_N",
    "POWER",
    "dense_half",
    "effective_count",
    "diffusion_value",
    "divergence",
    "fit_test_functions",
    "gradient",
    "integration_by_parts_check",
    "laplacian",
    "monomial_exponents",
    "robust_location_scale",
    "strong_form_check",
    "strong_form_residual",
    "test_functions",
    "time_derivative",
    "trapezoid_grid",
    "weak_form_check",
]
