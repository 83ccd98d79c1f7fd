"""Characteristics (THEORY §8.1-§8.3): C1 generic constructor, linear closed forms, C4 exact field.

* C1 by autograd on the endpoint map phi_t = (x - mu_t)/sigma_t reproduces the closed-form
  velocity and divergence of :class:`LinearPath` (to 1e-10) for a straight, a curved and a
  shifted/scaled path (mu_1 != 0, sigma_1 = 2), and C1's ODE-integrated log p_t(x | x0) matches
  the closed form (<= 1e-6) for Gaussian, uniform (points inside the support) and Laplace priors;
  the straight-line Gaussian kernel is also checked against N((1 - t) x0, t^2 I);
* kernel/characteristic consistency (§8.3 item 3): integrating f_t(x | x0) from x_1 at t = 1
  down to t lands on mu_t(x0) + sigma_t x1 (<= 1e-7), with the closed-form and the C1 field;
* the continuity residual d_t p + div(p f) of the C4 pair is ~1e-10 relative (<= 1e-8) in 2-D
  for weighted points, with straight-line Gaussian kernels, a curved path with a Laplace prior
  and a non-linear endpoint map;
* a non-linear endpoint map (T = 2): C1's velocity equals the implicit-function formula,
  its trajectory agrees with Newton inversion of phi, lands on x0 as t -> 0 within the bound
  implied by phi, and the ODE log-density equals the change of variables;
* the 1-D demo of §8.3 item 1 (uniform prior, data {0.5, 0.5, 1.2, 1.7}): the C4 density
  integrates to 1 and an equally spaced set of starts lands in fractions 0.5 / 0.25 / 0.25
  without crossing;
* priors, and clear ValueErrors for bad inputs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Laplace, MultivariateNormal
from torchdiffeq import odeint

from udm.processes.noise import GaussianNoise, LaplaceNoise, NoiseLaw, UniformNoise
from udm.theory.characteristics import Characteristic, ExactField, LinearPath, StraightLine, continuity_residual

D = 2
F64 = torch.float64

# (mu(t, x0), sigma(t), dmu, dsigma) with t an (n, 1) column.
PATHS = {
    "straight": (lambda t, x0: (1 - t) * x0, lambda t: t, lambda t, x0: -x0, lambda t: torch.ones_like(t)),
    "curved": (
        lambda t, x0: (1 - t) ** 2 * x0 + t * (1 - t) * torch.sin(x0),
        lambda t: torch.sin(math.pi * t / 2),
        lambda t, x0: -2 * (1 - t) * x0 + (1 - 2 * t) * torch.sin(x0),
        lambda t: (math.pi / 2) * torch.cos(math.pi * t / 2),
    ),
    # mu_1 = (0.3, -0.2) and sigma_1 = 2: phi_1 is not the identity (terminal volume term).
    "shifted": (
        lambda t, x0: (1 - t) * x0 + t * torch.tensor([0.3, -0.2], dtype=F64),
        lambda t: t * (1 + t),
        lambda t, x0: -x0 + torch.tensor([0.3, -0.2], dtype=F64),
        lambda t: 1 + 2 * t,
    ),
}


class Prior:
    """A noise law on R^dim as the (log p_T, draw n) pair the constructors take."""

    def __init__(self, law: NoiseLaw, dim: int) -> None:
        self.law, self.dim = law, dim
        self.log_prob = law.log_prob

    def sample(self, n: int, generator=None) -> torch.Tensor:
        return self.law.sample((n, self.dim), generator, dtype=F64)


def StandardGaussian(dim: int) -> Prior:
    return Prior(GaussianNoise(), dim)


def StandardLaplace(dim: int) -> Prior:
    return Prior(LaplaceNoise(scale=1.0), dim)


def UniformBox(dim: int, low: float, high: float) -> Prior:
    return Prior(UniformNoise(low, high), dim)


PRIORS = {"gaussian": StandardGaussian(D), "uniform": UniformBox(D, -1.0, 1.0), "laplace": StandardLaplace(D)}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _linear(name: str, prior, derivatives: bool = True) -> LinearPath:
    mu, sigma, dmu, dsigma = PATHS[name]
    if derivatives:
        return LinearPath(mu, sigma, prior.log_prob, prior.sample, dmu=dmu, dsigma=dsigma)
    return LinearPath(mu, sigma, prior.log_prob, prior.sample)


def _generic(name: str, prior) -> Characteristic:
    mu, sigma, _, _ = PATHS[name]
    return Characteristic(lambda t, x, x0: (x - mu(t[:, None], x0)) / sigma(t[:, None]), prior.log_prob)


def _batch(n: int, seed: int, prior) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """t in [0.05, 0.95], x0 ~ N(0, I), x1 from the prior (shrunk to the interior for the uniform box)."""
    g = _gen(seed)
    t = 0.05 + 0.9 * torch.rand(n, generator=g, dtype=F64)
    x0 = torch.randn(n, D, generator=g, dtype=F64)
    x1 = prior.sample(n, g)
    if isinstance(prior.law, UniformNoise):
        x1 = 0.9 * x1
    return t, x0, x1


# --------------------------------------------------------------------- C1 vs closed forms
@pytest.mark.parametrize("path_name", list(PATHS))
@pytest.mark.parametrize("prior_name", list(PRIORS))
def test_generic_c1_matches_linear_closed_forms(path_name: str, prior_name: str) -> None:
    prior = PRIORS[prior_name]
    closed, auto, generic = _linear(path_name, prior), _linear(path_name, prior, derivatives=False), _generic(path_name, prior)
    t, x0, x1 = _batch(8, 1, prior)
    x = closed.sample(t, x0, x1)

    f = closed.velocity(t, x, x0)
    torch.testing.assert_close(generic.velocity(t, x, x0), f, rtol=0, atol=1e-10)
    torch.testing.assert_close(auto.velocity(t, x, x0), f, rtol=0, atol=1e-10)
    with torch.no_grad():  # autograd is switched on inside
        torch.testing.assert_close(generic.velocity(t, x, x0), f, rtol=0, atol=1e-10)
    div = closed.divergence(t, x, x0)
    torch.testing.assert_close(generic.divergence(t, x, x0), div, rtol=0, atol=1e-10)
    torch.testing.assert_close(auto.divergence(t, x, x0), div, rtol=0, atol=1e-10)

    lp = closed.log_density(t, x, x0)
    assert torch.isfinite(lp).all()
    torch.testing.assert_close(generic.log_density_direct(t, x, x0), lp, rtol=0, atol=1e-10)
    torch.testing.assert_close(generic.log_density(t, x, x0), lp, rtol=0, atol=1e-6)
    # The label phi_t(x) is x1 and the closed form is p_1(x1) / sigma_t^d.
    torch.testing.assert_close(generic.phi(t, x, x0), x1, rtol=0, atol=1e-12)
    torch.testing.assert_close(lp, prior.log_prob(x1) - D * torch.log(PATHS[path_name][1](t[:, None])[:, 0]), rtol=0, atol=1e-12)


def test_straight_line_gaussian_kernel_and_cfm_target() -> None:
    prior = StandardGaussian(D)
    path = StraightLine(prior.log_prob, prior.sample)
    t, x0, x1 = _batch(16, 2, prior)
    x = path.sample(t, x0, x1)
    ref = torch.stack([MultivariateNormal((1 - ti) * x0i, ti**2 * torch.eye(D, dtype=F64)).log_prob(xi) for ti, x0i, xi in zip(t, x0, x)])
    torch.testing.assert_close(path.log_density(t, x, x0), ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(path.velocity(t, x, x0), x1 - x0, rtol=0, atol=1e-12)  # C2 step 3
    torch.testing.assert_close(path.divergence(t, x, x0), D / t, rtol=0, atol=1e-12)
    # Default x1 comes from prior_sample, reproducibly.
    torch.testing.assert_close(path.sample(0.5, x0, generator=3), path.sample(0.5, x0, prior.sample(16, 3)))


# ------------------------------------------------------------- §8.3 item 3: characteristics
def test_kernel_characteristic_consistency() -> None:
    prior = StandardGaussian(D)
    closed, generic = _linear("curved", prior), _generic("curved", prior)
    g = _gen(4)
    x0 = torch.randn(6, D, generator=g, dtype=F64)
    x1 = torch.randn(6, D, generator=g, dtype=F64)
    times = torch.tensor([1.0, 0.7, 0.3, 0.05], dtype=F64)

    sol = odeint(lambda s, y: closed.velocity(s, y, x0), x1, times, rtol=1e-11, atol=1e-11)  # x_1 = x1 at t = 1
    expected = torch.stack([closed.sample(s, x0, x1) for s in times])
    torch.testing.assert_close(sol, expected, rtol=0, atol=1e-7)
    torch.testing.assert_close(closed.trajectory(x1, x0, times), expected, rtol=0, atol=1e-14)
    # C1's ODE trajectory, times in any order.
    order = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(generic.trajectory(x1, x0, times[order], rtol=1e-11, atol=1e-11), expected[order], rtol=0, atol=1e-7)
    torch.testing.assert_close(generic.trajectory(x1, x0, [0.3, 0.3], rtol=1e-11, atol=1e-11), expected[[2, 2]], rtol=0, atol=1e-7)
    torch.testing.assert_close(generic.trajectory(x1, x0, [1.0]), expected[:1], rtol=0, atol=1e-12)


# ------------------------------------------------------------------- non-linear endpoint map
T_NL, EPS = 2.0, 0.1
A_NL = torch.tensor([[1.0, 0.6], [-0.8, 0.5]], dtype=F64)


def _nonlinear_endpoint(t: torch.Tensor, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """phi_t = x0 + T (x - x0)/t + eps (T - t) A tanh(x - x0): phi_T = id, invertible since eps T |A| < 1."""
    y = x - x0
    return x0 + T_NL * y / t[:, None] + EPS * (T_NL - t)[:, None] * (torch.tanh(y) @ A_NL.T)


def _nonlinear_velocity_reference(t: np.ndarray, x: np.ndarray, x0: np.ndarray) -> np.ndarray:
    """Implicit differentiation by hand: f = J^{-1} (T y / t^2 + eps A tanh y), J = (T/t) I + eps (T - t) A diag(sech^2 y)."""
    a = A_NL.numpy()
    out = []
    for ti, xi, x0i in zip(t, x, x0):
        y = xi - x0i
        jac = (T_NL / ti) * np.eye(D) + EPS * (T_NL - ti) * a @ np.diag(1 / np.cosh(y) ** 2)
        out.append(np.linalg.solve(jac, T_NL * y / ti**2 + EPS * a @ np.tanh(y)))
    return np.stack(out)


def test_nonlinear_endpoint_map() -> None:
    assert EPS * T_NL * float(torch.linalg.matrix_norm(A_NL, ord=2)) < 1
    prior = StandardGaussian(D)
    path = Characteristic(_nonlinear_endpoint, prior.log_prob, T=T_NL)
    g = _gen(5)
    n = 6
    t = 0.1 + 1.8 * torch.rand(n, generator=g, dtype=F64)
    x0 = torch.randn(n, D, generator=g, dtype=F64)
    x = x0 + torch.randn(n, D, generator=g, dtype=F64)
    ref = _nonlinear_velocity_reference(t.numpy(), x.numpy(), x0.numpy())
    np.testing.assert_allclose(path.velocity(t, x, x0).numpy(), ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(path.log_density(t, x, x0), path.log_density_direct(t, x, x0), rtol=0, atol=1e-6)

    x_T = x0 + 2 * torch.randn(n, D, generator=g, dtype=F64)
    times = torch.tensor([2.0, 1.0, 0.3, 0.03, 1e-3], dtype=F64)
    traj = path.trajectory(x_T, x0, times, rtol=1e-11, atol=1e-11)
    for s, xs in zip(times, traj):
        torch.testing.assert_close(xs, path.invert(s, x_T, x0, x_init=xs), rtol=0, atol=1e-7)
    torch.testing.assert_close(traj[0], x_T, rtol=0, atol=1e-12)  # phi_T = id
    # y_s = (s/T)(x_T - x0 - eps (T - s) A tanh y_s)  =>  |y_s| <= (s/T)(|x_T - x0| + eps T |A| sqrt(d)).
    bound = (times[:, None] / T_NL) * ((x_T - x0).norm(dim=1)[None] + EPS * T_NL * torch.linalg.matrix_norm(A_NL, ord=2) * math.sqrt(D))
    dist = (traj - x0[None]).norm(dim=2)
    assert (dist <= bound + 1e-9).all()
    assert dist[-1].max() < 5e-3  # lands on x0 as t -> 0


# --------------------------------------------------------------------------- C4 and continuity
def _nonlinear_path() -> Characteristic:
    return Characteristic(_nonlinear_endpoint, StandardGaussian(D).log_prob, T=T_NL)


@pytest.mark.parametrize(
    "make_path",
    [
        lambda: StraightLine(StandardGaussian(D).log_prob),
        lambda: _linear("curved", StandardLaplace(D), derivatives=False),
        _nonlinear_path,
    ],
    ids=["straight-gaussian", "curved-laplace-autograd", "nonlinear-generic"],
)
def test_continuity_residual_of_exact_field(make_path) -> None:
    path = make_path()
    g = _gen(6)
    points = torch.randn(4, D, generator=g, dtype=F64)
    field = ExactField(path, points, weights=[0.1, 0.4, 0.2, 0.3])
    n = 12
    t = path.T * (0.1 + 0.85 * torch.rand(n, generator=g, dtype=F64))
    x = points[torch.arange(n) % 4] + t[:, None] * torch.randn(n, D, generator=g, dtype=F64)
    res = continuity_residual(field, t, x)
    assert (res.scale > 1e-6).all()
    assert float(res.relative.max()) <= 1e-8

    # C4 definitions: flux = p f without the floor; one dominant point gives its own kernel's velocity.
    p, flux, v = field.density(t, x), field.flux(t, x), field.velocity(t, x)
    torch.testing.assert_close(v * (p + field.floor)[:, None], flux, rtol=1e-12, atol=1e-14)
    single = ExactField(path, points[:1])
    x1 = points[:1].expand(n, D) + 0.1 * t[:, None]
    torch.testing.assert_close(single.density(t, x1), path.log_density_direct(t, x1, points[:1]).exp(), rtol=1e-12, atol=0)
    dens = single.density(t, x1)
    torch.testing.assert_close(single.velocity(t, x1), path.velocity(t, x1, points[:1]) * (dens / (dens + 1e-8))[:, None], rtol=1e-12, atol=1e-14)


def test_post_demo_uniform_prior_1d() -> None:
    """§8.3 item 1 with equally spaced starts: in 1-D the flow is monotone and transports quantiles."""
    prior = UniformBox(1, 0.0, 2.0)
    field = ExactField(StraightLine(prior.log_prob), [0.5, 0.5, 1.2, 1.7])
    torch.testing.assert_close(field.weights, torch.tensor([0.25, 0.25, 0.25, 0.25], dtype=F64))

    grid = torch.linspace(-0.5, 2.5, 30001, dtype=F64)[:, None]
    for t in (0.2, 0.6):
        p = field.density(t, grid)
        assert float(p[0]) == 0.0 and float(p[-1]) == 0.0  # compact support: exact zeros
        assert abs(float(torch.trapezoid(p, grid[:, 0])) - 1.0) < 1e-3

    n = 200
    x = 2.0 * (torch.arange(n, dtype=F64)[:, None] + 0.5) / n
    times = torch.logspace(0, -4, 801, dtype=F64)
    for s, s_next in zip(times[:-1], times[1:]):
        h = s_next - s
        k1 = field.velocity(s, x)
        k2 = field.velocity(s + h, x + h * k1)
        x_next = x + 0.5 * h * (k1 + k2)
        assert (x_next[1:, 0] >= x_next[:-1, 0] - 1e-12).all()  # no crossing
        x = x_next
    end = x[:, 0]
    fractions = [float(((end - c).abs() < 0.05).double().mean()) for c in (0.5, 1.2, 1.7)]
    np.testing.assert_allclose(fractions, [0.5, 0.25, 0.25], atol=0.02)


# ------------------------------------------------------------------------------------ priors
def test_priors() -> None:
    """The noise laws used as priors: log-densities against torch.distributions, draws reproducible, variances."""
    x = torch.randn(5, 3, generator=_gen(7), dtype=F64)
    torch.testing.assert_close(StandardGaussian(3).log_prob(x), MultivariateNormal(torch.zeros(3, dtype=F64), torch.eye(3, dtype=F64)).log_prob(x))
    torch.testing.assert_close(StandardLaplace(3).log_prob(x), Laplace(torch.zeros((), dtype=F64), torch.ones((), dtype=F64)).log_prob(x).sum(-1))
    box = UniformBox(3, -1.0, 3.0)
    lp = box.log_prob(torch.tensor([[0.0, 1.0, 2.9], [0.0, 3.1, 0.0]], dtype=F64))
    assert float(lp[0]) == pytest.approx(-3 * math.log(4.0)) and lp[1] == -math.inf
    for prior, var in ((StandardGaussian(2), 1.0), (StandardLaplace(2), 2.0), (UniformBox(2, -1.0, 3.0), 16 / 12)):
        s = prior.sample(4000, 8)
        assert s.shape == (4000, 2) and s.dtype == F64
        torch.testing.assert_close(s, prior.sample(4000, 8))
        assert torch.isfinite(prior.log_prob(s)).all()
        assert abs(float(s.var(0).mean()) / var - 1) < 0.1


# ------------------------------------------------------------------------------- bad inputs
def test_bad_inputs() -> None:
    prior = StandardGaussian(D)
    path = StraightLine(prior.log_prob)
    generic = _generic("straight", prior)
    x, x0 = torch.zeros(5, D, dtype=F64), torch.ones(5, D, dtype=F64)
    for c in (path, generic):
        with pytest.raises(ValueError, match="x0 must have the shape of x"):
            c.velocity(0.5, x, torch.ones(4, D, dtype=F64))
        with pytest.raises(ValueError, match=r"shape \(n, d\)"):
            c.velocity(0.5, torch.zeros(5, dtype=F64), x0)
        for bad_t in (0.0, -0.3, 1.5, float("nan")):
            with pytest.raises(ValueError, match=r"t must lie in \(0, T\]"):
                c.log_density(bad_t, x, x0)
        with pytest.raises(ValueError, match="t must be a scalar or have shape"):
            c.divergence(torch.full((4,), 0.5, dtype=F64), x, x0)
        with pytest.raises(ValueError, match="times must be a non-empty 1-D"):
            c.trajectory(x, x0, torch.zeros(2, 2, dtype=F64) + 0.5)
        with pytest.raises(ValueError, match=r"t must lie in \(0, T\]"):
            c.trajectory(x, x0, [0.5, 0.0])
    with pytest.raises(ValueError, match="endpoint must return"):
        Characteristic(lambda t, x, x0: x[:, :1], prior.log_prob).velocity(0.5, x, x0)
    with pytest.raises(ValueError, match="prior_log_prob must return"):
        Characteristic(lambda t, x, x0: x, lambda u: u).log_density_direct(0.5, x, x0)
    with pytest.raises(ValueError, match="T must be a positive"):
        Characteristic(lambda t, x, x0: x, prior.log_prob, T=0.0)
    with pytest.raises(ValueError, match="must be callables"):
        Characteristic(None, prior.log_prob)
    with pytest.raises(ValueError, match="sigma_t must be positive"):
        LinearPath(lambda t, x0: x0, lambda t: t - 0.5, prior.log_prob).velocity(0.25, x, x0)
    with pytest.raises(ValueError, match=r"mu\(t, x0\) must return"):
        LinearPath(lambda t, x0: x0[:, :1], lambda t: t, prior.log_prob).velocity(0.25, x, x0)
    with pytest.raises(ValueError, match="give x1 or construct the path with prior_sample"):
        path.sample(0.5, x0)
    with pytest.raises(ValueError, match="weights must be non-negative"):
        ExactField(path, torch.zeros(3, D), weights=[1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="weights must be non-negative"):
        ExactField(path, torch.zeros(3, D), weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="must have d = 2 columns"):
        ExactField(path, torch.zeros(3, D)).velocity(0.5, torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"t must lie in \(0, T\]"):
        continuity_residual(ExactField(path, torch.zeros(3, D)), 1.2, torch.zeros(4, D))
    with pytest.raises(ValueError, match="path must be a Characteristic"):
        ExactField(object(), torch.zeros(3, D))
    with pytest.raises(ValueError, match="high > low"):
        UniformBox(2, 1.0, 1.0)
