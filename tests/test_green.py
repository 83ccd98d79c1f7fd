"""Green's functions of the continuity equation (THEORY §7.1-§7.3).

* divergence-free: nabla_(t,x) . G = 0 by autograd for every kernel in d = 1, 2, 5,
  and a perturbed field fails the same check (§7.3 item 1);
* the generic CDF construction (autograd of psi) equals the closed forms of the
  gravity, Gaussian and scale kernels, and a non-scale psi's hand-derived velocity (§7.1);
* normalization and initial condition by quadrature in d = 1, 2 (§7.3 items 2-3);
* continuity residual of point-mass data (§7.3 item 4);
* Gaussian Green's function = -sigma' sigma grad log p_t on GMM and point-mass data (§7.3 item 5);
* radial laws of every sampler by KS, and the Beta law of the gravity kernel (§7.3 item 6, §6.3);
* C = 2 / S_{d+1}(1) and the gravity field versus PFGM's F (§6.1);
* clear errors on bad input.
All arithmetic is float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch

import udm
from udm.theory import GaussianMixture, PointMasses
from udm.theory.green import (
    RADIAL_CDFS,
    CDFGreen,
    GaussianGreen,
    GravityGreen,
    GreenField,
    GreenFunction,
    ScaleGreen,
    continuity_residual,
    divergence_residual,
    inverse_cdf,
    normalization,
    one_minus_exp,
    sphere_area,
)

VE = udm.get_process("ve")


def _sigma_poly(t: torch.Tensor) -> torch.Tensor:
    """A smooth increasing noise scale with sigma_0 = 0 (so G_1 -> delta as t -> 0)."""
    return t + t**3 / 3


def _psi_nonscale(t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """psi_t(r) = 1 - exp(-r/t - r^2/t): not a function of r/t alone; f = (1 + r)/(t (1 + 2r)) (x - x0)."""
    return 1.0 - torch.exp(-r / t - r * r / t)


def _gauss_cdf_psi(d: int, sigma):
    return lambda t, r: torch.special.gammainc(torch.full_like(r, 0.5 * d), r * r / (2.0 * sigma(t) ** 2))


KERNELS = {
    "gravity": lambda d: GravityGreen(d),
    "gaussian_ve": lambda d: GaussianGreen(d, VE.sigma),
    "gaussian_poly": lambda d: GaussianGreen(d, _sigma_poly),
    "scale_exp": lambda d: ScaleGreen(d, "exp"),
    "scale_tanh": lambda d: ScaleGreen(d, "tanh"),
    "cdf_nonscale": lambda d: CDFGreen(d, _psi_nonscale),
    "cdf_gravity": lambda d: CDFGreen(d, GravityGreen(d).psi, name="cdf_gravity"),
    "cdf_gaussian": lambda d: CDFGreen(d, _gauss_cdf_psi(d, _sigma_poly), name="cdf_gaussian"),
}
# kernels whose G_1 -> delta as t -> 0 (the VE schedule jumps to sigma_min = 0.01 at t = 0+);
# cdf_gravity equals gravity (checked above) and is slow to integrate at small t
DELTA_KERNELS = [k for k in KERNELS if k not in ("gaussian_ve", "cdf_gravity")]


def _random_points(n: int, d: int, seed: int, t_range=(0.4, 0.9)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = t_range[0] + (t_range[1] - t_range[0]) * torch.rand(n, generator=g, dtype=torch.float64)
    x0 = torch.randn(n, d, generator=g, dtype=torch.float64)
    x = x0 + torch.randn(n, d, generator=g, dtype=torch.float64)
    return t, x, x0


# --- §7.3 item 1: divergence-free -----------------------------------------------------------------
@pytest.mark.parametrize("d", [1, 2, 5])
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_green_function_is_divergence_free(kernel: str, d: int) -> None:
    green = KERNELS[kernel](d)
    t, x, x0 = _random_points(48, d, seed=10 + d)
    res = divergence_residual(green, t, x, x0)
    assert res.residual.shape == (48,) and bool((res.scale > 0).all())
    assert float(res.relative.max()) <= 1e-10


class _WrongGaussian(GaussianGreen):
    """G_{>1} scaled by 1.1: no longer divergence-free."""

    def velocity(self, t, x, x0):
        return 1.1 * super().velocity(t, x, x0)


def test_divergence_check_detects_a_wrong_field() -> None:
    t, x, x0 = _random_points(48, 2, seed=3)
    res = divergence_residual(_WrongGaussian(2, _sigma_poly), t, x, x0)
    assert float(res.relative.median()) > 1e-3


# --- §7.1: the CDF construction versus closed forms -------------------------------------------------
@pytest.mark.parametrize("d", [1, 3, 5, 20, 100])
def test_gravity_psi_is_the_incomplete_beta(d: int) -> None:
    g = torch.Generator().manual_seed(d)
    t = 0.1 + 2 * torch.rand(400, generator=g, dtype=torch.float64)
    r = 3 * d * torch.rand(400, generator=g, dtype=torch.float64) ** 2
    ref = scipy.special.betainc(0.5 * d, 0.5, (r**2 / (r**2 + t**2)).numpy())
    np.testing.assert_allclose(GravityGreen(d).psi(t, r).numpy(), ref, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("d", [1, 2, 5])
def test_generic_construction_matches_closed_forms(d: int) -> None:
    t, x, x0 = _random_points(40, d, seed=20 + d)
    r = (x - x0).norm(dim=1)
    sd = sphere_area(d)
    close = dict(rtol=1e-10, atol=0.0)
    # gravity and Gaussian: autograd of psi reproduces the closed-form G (§7.1 "all isotropic solutions ... a 1-D CDF")
    for closed, generic in [
        (GravityGreen(d), KERNELS["cdf_gravity"](d)),
        (GaussianGreen(d, _sigma_poly), KERNELS["cdf_gaussian"](d)),
    ]:
        (a1, ax), (b1, bx) = closed.G(t, x, x0), generic.G(t, x, x0)
        torch.testing.assert_close(b1, a1, **close)
        torch.testing.assert_close(bx, ax, **close)
        torch.testing.assert_close(generic.velocity(t, x, x0), closed.velocity(t, x, x0), **close)
        torch.testing.assert_close(generic.log_density(t, x, x0), closed.log_density(t, x, x0), rtol=1e-12, atol=1e-12)
    # scale families: varphi / phi = 1 / t (worked example fields), densities by hand
    expected = {
        "exp": torch.exp(-r / t) / (t * sd * r ** (d - 1)),
        "tanh": (1.0 / torch.cosh(r / t)) ** 2 / (t * sd * r ** (d - 1)),
    }
    for name, dens in expected.items():
        scale = ScaleGreen(d, name)
        generic = CDFGreen(d, lambda tt, rr, f=RADIAL_CDFS[name]: f(rr / tt))
        torch.testing.assert_close(scale.density(t, x, x0), dens, **close)
        torch.testing.assert_close(generic.velocity(t, x, x0), (x - x0) / t[:, None], **close)
        torch.testing.assert_close(generic.flux(t, x, x0), scale.flux(t, x, x0), **close)
    # a non-scale psi: f = -d_t psi / (r d_r psi) (x - x0) = (1 + r) / (t (1 + 2 r)) (x - x0)
    f = KERNELS["cdf_nonscale"](d).velocity(t, x, x0)
    torch.testing.assert_close(f, ((1 + r) / (t * (1 + 2 * r)))[:, None] * (x - x0), **close)


def test_one_minus_exp_keeps_tail_derivatives() -> None:
    z = torch.tensor([1e-20, 0.5, 40.0, 600.0], dtype=torch.float64, requires_grad=True)
    v = one_minus_exp(z)
    (g,) = torch.autograd.grad(v.sum(), z, create_graph=True)
    (g2,) = torch.autograd.grad(g.sum(), z)
    zd = z.detach()
    torch.testing.assert_close(v.detach(), -torch.expm1(-zd), rtol=1e-15, atol=0.0)
    torch.testing.assert_close(g.detach(), torch.exp(-zd), rtol=1e-15, atol=0.0)
    torch.testing.assert_close(g2, -torch.exp(-zd), rtol=1e-15, atol=0.0)
    assert float(g.detach()[3]) > 0  # torch's own expm1 backward gives exactly 0 here


# --- §7.3 items 2-3: normalization and initial condition --------------------------------------------
@pytest.mark.parametrize("d", [1, 2])
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_normalization_by_quadrature(kernel: str, d: int) -> None:
    green = KERNELS[kernel](d)
    x0 = [0.3, -0.7][:d]
    for t in (0.05, 0.8):
        assert abs(normalization(green, t, x0) - 1.0) <= 1e-7


def test_quadrature_with_a_non_isotropic_test_function() -> None:
    """E[exp(a . x)] under N(x0, sigma^2 I) is exp(a . x0 + sigma^2 |a|^2 / 2): checks the polar quadrature off-axis."""
    green, x0, t = GaussianGreen(2, _sigma_poly), torch.tensor([0.4, -0.2], dtype=torch.float64), 0.7
    a = torch.tensor([0.9, -0.5], dtype=torch.float64)
    value = normalization(green, t, x0, lambda x: torch.exp(x @ a))
    s = float(_sigma_poly(torch.tensor(t, dtype=torch.float64)))
    assert value == pytest.approx(math.exp(float(a @ x0) + 0.5 * s * s * float(a @ a)), rel=1e-10)


@pytest.mark.parametrize("kernel", DELTA_KERNELS)
def test_initial_condition_recovers_point_mass(kernel: str) -> None:
    """int G_1(t, x; x0) h(x) dx -> h(x0): O(t) for the heavy-tailed gravity (Cauchy) kernel, O(t^2) otherwise."""
    green = KERNELS[kernel](1)
    x0 = 0.3
    h_x0 = math.cos(x0) / (1 + x0**2)
    ts = [0.2, 0.05, 0.0125, 0.003125]
    errs = [abs(normalization(green, t, [x0], lambda x: torch.cos(x[:, 0]) / (1 + x[:, 0] ** 2)) - h_x0) for t in ts]
    orders = [math.log(errs[i] / errs[i + 1]) / math.log(4) for i in range(len(ts) - 1)]
    expected = 1.0 if kernel == "gravity" else 2.0
    assert all(abs(o - expected) < 0.25 for o in orders[1:]), orders
    assert errs[-1] < 5e-3


# --- §7.3 item 4: point-mass data -----------------------------------------------------------------
POINTS = [[-1.0, 0.5], [0.8, -0.3], [0.2, 1.4], [1.5, 1.0]]
WEIGHTS = [0.1, 0.4, 0.3, 0.2]


@pytest.mark.parametrize("kernel", ["gravity", "gaussian_ve", "gaussian_poly", "scale_exp", "cdf_nonscale"])
def test_continuity_residual_for_point_masses(kernel: str) -> None:
    field = GreenField(KERNELS[kernel](2), POINTS, WEIGHTS)
    g = torch.Generator().manual_seed(5)
    t = 0.4 + 0.5 * torch.rand(40, generator=g, dtype=torch.float64)
    x = 1.5 * torch.randn(40, 2, generator=g, dtype=torch.float64) + 0.4
    res = continuity_residual(field, t, x)
    assert bool((res.scale > 0).all()) and float(res.relative.max()) <= 1e-8
    # f_t = u_{>1} / u_1 = sum_j w_j f_t(x | x_j)
    u1, ux = field.G(t, x)
    torch.testing.assert_close(field.velocity(t, x), ux / u1[:, None], rtol=1e-11, atol=1e-13)
    torch.testing.assert_close(field.posterior_weights(t, x).sum(1), torch.ones(40, dtype=torch.float64))


# --- §7.3 item 5: Gaussian Green's function = Part 12 -----------------------------------------------
@pytest.mark.parametrize("construction", ["closed", "cdf"])
def test_gaussian_green_reproduces_score_velocity_on_gmm(construction: str) -> None:
    gmm = GaussianMixture.isotropic([0.3, 0.7], [[-1.0, 0.5], [1.2, -0.4]], [0.4, 0.7])
    green = GaussianGreen(2, VE.sigma) if construction == "closed" else CDFGreen(2, _gauss_cdf_psi(2, VE.sigma))
    g = torch.Generator().manual_seed(7)
    for t in (0.25, 0.55):
        x = 2.0 * torch.randn(64, 2, generator=g, dtype=torch.float64)
        # varphi / phi from the Green's function, at two unrelated sources: it must not depend on x0
        ratios = []
        for _ in range(2):
            x0 = x + torch.randn(64, 2, generator=g, dtype=torch.float64)
            ratios.append((green.velocity(t, x, x0) / (x - x0)).reshape(-1))
        torch.testing.assert_close(ratios[0], ratios[1], rtol=1e-12, atol=0.0)
        f = ratios[0].reshape(64, 2) * (x - gmm.posterior_mean(x, t, VE))
        tt = torch.tensor(t, dtype=torch.float64)
        target = -VE.dsigma(tt) * VE.sigma(tt) * gmm.score(x, t, VE)
        assert float(((f - target).norm(dim=1) / target.norm(dim=1)).max()) <= 1e-10


def test_gaussian_green_field_reproduces_point_mass_score() -> None:
    pm = PointMasses(POINTS, WEIGHTS)
    field = GreenField(GaussianGreen(2, VE.sigma), pm)
    g = torch.Generator().manual_seed(8)
    x = 1.5 * torch.randn(32, 2, generator=g, dtype=torch.float64)
    t = 0.35
    tt = torch.tensor(t, dtype=torch.float64)
    target = -VE.dsigma(tt) * VE.sigma(tt) * pm.score(x, t, VE)
    torch.testing.assert_close(field.velocity(t, x), target, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(field.log_density(t, x), pm.log_prob(x, t, VE), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(field.posterior_mean(t, x), pm.posterior_mean(x, t, VE), rtol=1e-12, atol=1e-12)


# --- §7.3 item 6: radial laws ---------------------------------------------------------------------
SAMPLERS = [
    ("gravity", "auto"),
    ("gravity", "numeric"),
    ("gaussian_poly", "auto"),
    ("gaussian_ve", "numeric"),
    ("scale_exp", "auto"),
    ("scale_exp", "numeric"),
    ("scale_tanh", "auto"),
    ("scale_tanh", "numeric"),
    ("cdf_nonscale", "numeric"),
]


@pytest.mark.parametrize("kernel,method", SAMPLERS)
def test_sampled_radii_follow_psi(kernel: str, method: str) -> None:
    d, n = 3, 1500
    green = KERNELS[kernel](d)
    g = torch.Generator().manual_seed(11)
    t = 0.3 + 0.6 * torch.rand(n, generator=g, dtype=torch.float64)
    x0 = torch.randn(n, d, generator=g, dtype=torch.float64)
    x = green.sample(t, x0, g, method=method)
    radius = (x - x0).norm(dim=1)
    u = green.radius_cdf_numpy(t.numpy(), radius.numpy())
    assert scipy.stats.kstest(u, "uniform").pvalue > 0.01
    direction = (x - x0) / radius[:, None]
    assert float(direction.mean(0).norm()) < 4 / math.sqrt(n)
    radii = green.sample_radius(0.5, n, 12, method=method)
    assert radii.shape == (n,) and scipy.stats.kstest(green.radius_cdf_numpy(0.5, radii.numpy()), "uniform").pvalue > 0.01


def test_radius_ks_has_power() -> None:
    """Gravity (Cauchy) radii are far from the Gaussian radial law of the same scale."""
    radii = GravityGreen(3).sample_radius(0.5, 1500, 3)
    u = GaussianGreen(3, lambda t: t).radius_cdf_numpy(0.5, radii.numpy())
    assert scipy.stats.kstest(u, "uniform").pvalue < 1e-6


@pytest.mark.parametrize("method", ["auto", "numeric"])
def test_gravity_kernel_beta_law(method: str) -> None:
    """B = rho^2 / (1 + rho^2) ~ Beta(d/2, 1/2) with rho = |x - x0| / t (§6.3 item 2), per-sample t."""
    d, n = 3, 2000
    g = torch.Generator().manual_seed(13)
    t = 0.1 + 2.0 * torch.rand(n, generator=g, dtype=torch.float64)
    x0 = torch.randn(n, d, generator=g, dtype=torch.float64)
    rho = (GravityGreen(d).sample(t, x0, g, method=method) - x0).norm(dim=1) / t
    b = (rho**2 / (1 + rho**2)).numpy()
    assert scipy.stats.kstest(b, scipy.stats.beta(d / 2, 0.5).cdf).pvalue > 0.01


def test_numeric_inverse_cdf_is_precise() -> None:
    u = torch.tensor([1e-9, 0.01, 0.3, 0.5, 0.9, 0.999999], dtype=torch.float64)
    torch.testing.assert_close(inverse_cdf(RADIAL_CDFS["exp"], u), -torch.log1p(-u), rtol=1e-11, atol=0.0)
    d, t = 4, 0.7
    r = inverse_cdf(lambda rr: GravityGreen(d).psi(t, rr), u)
    # psi_t(r) = I_b(d/2, 1/2) with b = r^2 / (r^2 + t^2); near u = 1 invert through 1 - b = I^{-1}_{1-u}(1/2, d/2)
    un = u.numpy()
    b = scipy.special.betaincinv(d / 2, 0.5, un)
    c = scipy.special.betaincinv(0.5, d / 2, 1.0 - un)
    ref = np.where(un < 0.5, t * np.sqrt(b / (1 - b)), t * np.sqrt((1 - c) / c))
    np.testing.assert_allclose(r.numpy(), ref, rtol=1e-10)


def test_sampling_is_reproducible() -> None:
    green = ScaleGreen(2, "tanh")
    x0 = torch.zeros(5, 2, dtype=torch.float64)
    torch.testing.assert_close(green.sample(0.5, x0, 4), green.sample(0.5, x0, 4))
    assert not torch.equal(green.sample(0.5, x0, 4), green.sample(0.5, x0, 5))


# --- §6.1 / §7.1: the gravity constant and PFGM -------------------------------------------------------
def test_gravity_constant() -> None:
    assert sphere_area(1) == pytest.approx(2.0, rel=1e-15)
    assert sphere_area(2) == pytest.approx(2 * math.pi, rel=1e-15)
    assert sphere_area(3) == pytest.approx(4 * math.pi, rel=1e-15)
    assert sphere_area(4) == pytest.approx(2 * math.pi**2, rel=1e-15)
    assert GravityGreen(1).C == pytest.approx(1 / math.pi, rel=1e-15)  # Cauchy
    for d in range(1, 8):
        c = math.gamma((d + 1) / 2) / math.pi ** ((d + 1) / 2)
        assert GravityGreen(d).C == pytest.approx(c, rel=1e-14)
        assert GravityGreen(d).C == pytest.approx(2 / sphere_area(d + 1), rel=1e-14)


def test_gravity_field_is_pfgm_field() -> None:
    """u = sum_j pi_j G_j equals -2 F with F = -(1/S_{d+1}) sum_j pi_j (x - x_j, t) / R_j^{d+1} (§6.1); same ODE."""
    d = 3
    g = torch.Generator().manual_seed(17)
    pts = torch.randn(5, d, generator=g, dtype=torch.float64)
    w = torch.tensor([0.1, 0.3, 0.2, 0.25, 0.15], dtype=torch.float64)
    field = GreenField(GravityGreen(d), pts, w)
    x = 2 * torch.randn(30, d, generator=g, dtype=torch.float64)
    t = 0.2 + torch.rand(30, generator=g, dtype=torch.float64)
    diff = x[:, None, :] - pts[None]
    r_pow = (diff.pow(2).sum(-1) + t[:, None] ** 2) ** ((d + 1) / 2)
    f_x = -(w[None, :, None] * diff / r_pow[..., None]).sum(1) / sphere_area(d + 1)
    f_t = -(w[None] * t[:, None] / r_pow).sum(1) / sphere_area(d + 1)
    u1, ux = field.G(t, x)
    torch.testing.assert_close(u1, -2 * f_t, rtol=1e-12, atol=0.0)
    torch.testing.assert_close(ux, -2 * f_x, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(field.velocity(t, x), f_x / f_t[:, None], rtol=1e-11, atol=1e-14)


# --- errors ---------------------------------------------------------------------------------------
def test_errors_are_clear() -> None:
    x = torch.zeros(4, 2, dtype=torch.float64) + 0.5
    x0 = torch.zeros(4, 2, dtype=torch.float64)
    green = GravityGreen(2)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="dimension d must be an integer >= 1"):
            GravityGreen(bad)
    for bad_t in (0.0, -0.5, torch.tensor([0.1, 0.2, 0.0, 0.3])):
        with pytest.raises(ValueError, match="t must be finite and > 0"):
            green.density(bad_t, x, x0)
    with pytest.raises(ValueError, match=r"t must be a scalar or have shape \(4,\)"):
        green.velocity(torch.ones(3), x, x0)
    with pytest.raises(ValueError, match=r"x must have shape \(n, d\) with d = 2"):
        green.density(0.5, torch.zeros(4, 3), x0)
    with pytest.raises(ValueError, match=r"x0 must have shape \(4, 2\)"):
        green.flux(0.5, x, torch.zeros(5, 2))
    with pytest.raises(ValueError, match="t must be finite and > 0"):
        green.psi(0.0, 1.0)
    with pytest.raises(ValueError, match="unknown radial CDF 'gauss'"):
        ScaleGreen(2, "gauss")
    with pytest.raises(ValueError, match="must be a CDF on"):
        ScaleGreen(2, lambda s: 1.0 - torch.exp(-s) + 0.5)
    with pytest.raises(ValueError, match="must be a CDF on"):
        CDFGreen(2, lambda t, r: torch.exp(-r / t))
    with pytest.raises(ValueError, match="sigma\\(t\\) must be finite and > 0"):
        GaussianGreen(2, lambda t: -t).density(0.5, x, x0)
    with pytest.raises(ValueError, match="unknown sampling method 'exact'"):
        green.sample(0.5, x0, 0, method="exact")
    with pytest.raises(ValueError, match="in d = 1 or 2 only"):
        normalization(GravityGreen(3), 0.5, [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="weights must be non-negative, one per point"):
        GreenField(green, POINTS, [0.5, 0.5])
    with pytest.raises(ValueError, match=r"probabilities u in \[0, 1\)"):
        inverse_cdf(RADIAL_CDFS["exp"], torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="needs a marginal field.*divergence_residual"):
        continuity_residual(green, 0.5, x)
    assert isinstance(green, GreenFunction)


@pytest.mark.parametrize("kernel", ["gravity", "gaussian_poly", "scale_tanh", "cdf_nonscale"])
def test_gf1_targets_average_to_the_marginal_field(kernel: str) -> None:
    """§7.2 GF1: binned means of f_t(x_t | x0) over (x0 ~ data, x_t ~ kernel) pairs match the marginal field f_t(x).

    d = 1, two weighted point masses at t = 0.5; each bin's mean target is within 5 standard errors of
    GreenField.velocity at the targets' mean position (the regression of the targets is the field).
    """
    green = KERNELS[kernel](1)
    points = torch.tensor([[-1.0], [1.0]], dtype=torch.float64)
    field = GreenField(green, points, [0.3, 0.7])
    g = torch.Generator().manual_seed(3)
    j = (torch.rand(200_000, generator=g, dtype=torch.float64) < 0.7).long()
    x, target = green.training_pair(0.5, points[j], g)
    checked = 0
    for lo in torch.linspace(-1.5, 1.5, 7)[:-1].tolist():
        inside = (x[:, 0] >= lo) & (x[:, 0] < lo + 0.5)
        if int(inside.sum()) < 2000:
            continue
        t_in = target[inside, 0]
        expected = field.velocity(0.5, x[inside]).mean()  # the field averaged over the same points
        assert abs(float(t_in.mean() - expected)) < 5 * float(t_in.std()) / math.sqrt(int(inside.sum())), (lo, kernel)
        checked += 1
    assert checked >= 4
    prior = green.prior(5.0, 4000, torch.Generator().manual_seed(4))
    assert scipy.stats.kstest(prior.abs()[:, 0].numpy(), lambda r: green.radius_cdf_numpy(5.0, r)).pvalue > 0.01
