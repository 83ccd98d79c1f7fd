"""PFGM and PFGM++ (THEORY §6, §7.4): the laws of §6.3 and §7.4, the P2 target, and the exact-field ODE.

Every law is tested against its closed form (Beta KS tests with fixed seeds);
the ODE tests run the library's own samplers (``udm.sample``) on the exact
posterior mean of weighted point masses, so they test the process, the
``pfgm`` parameterization and the solvers together.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import udm
from udm.denoiser import PFGMParameterization
from udm.objectives import PoissonFieldLoss, empirical_posterior_mean, make_loss
from udm.processes.pfgm import rules_of_thumb, scales
from udm.theory.pointmass import PointMasses

POINTS = PointMasses([[1.0, 0.0], [-0.6, 0.8], [-0.4, -0.9]], [0.5, 0.3, 0.2])


def _beta_ks(w: torch.Tensor, a: float, b: float) -> float:
    """KS p-value of |w|^2 / (1 + |w|^2) against Beta(a, b)."""
    r2 = (w.to(torch.float64).flatten(1) ** 2).sum(1).numpy()
    return stats.kstest(r2 / (1.0 + r2), stats.beta(a, b).cdf).pvalue


def test_p1_perturbation_is_the_cauchy_kernel_in_law() -> None:
    """§6.3 item 2: w = (x - y)/z is multivariate Cauchy, B = |w|^2/(1+|w|^2) ~ Beta(N/2, 1/2)."""
    process = udm.get_process("pfgm", M=60, restrict_M=False)
    y = torch.randn(4000, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z, eps = process.perturb(y, torch.Generator().manual_seed(1))
    x = process.corrupt(y, z, eps)
    assert _beta_ks((x - y) / z[:, None], 2.5, 0.5) > 0.01
    grow = (1.03 ** torch.tensor(60.0)).item()
    assert float(z.min()) > 0 and float(z.max()) < 0.01 * grow * 6


def test_p1_is_not_the_kernel_at_a_fixed_z() -> None:
    """THEORY §6.3 says the Cauchy law holds "for every fixed z"; it holds only marginally over z.

    With M = 0, z = |eps_z| and (x - y)/z = eps_x / z is Gaussian given z, so the
    conditional-velocity target (x - y)/z is biased under P1 pairs; PFGM's P2 target
    (the field of the data at (x, z)) is not, which is why the two are separate objectives.
    """
    process = udm.get_process("pfgm", M=0.0, restrict_M=False)
    y = torch.zeros(20000, 3, dtype=torch.float64)
    z, eps = process.perturb(y, torch.Generator().manual_seed(2))
    band = (z > 0.012) & (z < 0.014)
    assert int(band.sum()) > 1000
    assert _beta_ks(eps[band], 1.5, 0.5) < 1e-6


@pytest.mark.parametrize("kind", ["plane", "hemisphere"])
def test_prior_radius_law(kind: str) -> None:
    """§6.3 item 3: x / z_max on the prior plane is Cauchy: Beta(N/2, 1/2); clipping bounds the radius."""
    process = udm.get_process("pfgm", z_max=30.0, prior=kind)
    x = process.prior((4000, 4), torch.Generator().manual_seed(3), dtype=torch.float64)
    assert _beta_ks(x / 30.0, 2.0, 0.5) > 0.01
    clipped = udm.get_process("pfgm", z_max=30.0, prior=kind, upper_norm=200.0)
    r = clipped.prior((4000, 4), torch.Generator().manual_seed(3), dtype=torch.float64).norm(dim=1)
    assert 1.0 - 1e-9 <= float(r.min()) and float(r.max()) <= 200.0 + 1e-9
    assert int((r > 199.999).sum()) > 0


def test_rules_of_thumb_reproduce_the_paper_configs() -> None:
    """§6.2: CIFAR-10 (N = 3072) with M = 291 gives z_max ~ 43.4 and upper_norm ~ 3015; M from the mean norm."""
    s = scales(291, 3072)
    assert s["z_max"] == pytest.approx(43.4, abs=0.05)
    assert s["upper_norm"] == pytest.approx(3013.0, rel=2e-3)
    x = torch.randn(512, 3072, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x = 27.0 * x / x.norm(dim=1, keepdim=True)
    fitted = rules_of_thumb(x)
    expected = math.floor(0.75 * math.log(27.0**2 / (2 * math.sqrt(3072) * 1e-4)) / math.log(1.03)) + 1
    assert fitted["M"] == expected
    process = udm.get_process("pfgm")
    assert not process.has_prior
    with pytest.raises(ValueError, match="fit_prior"):
        process.perturb(torch.zeros(2, 2))
    process.fit_prior(x)
    assert process.has_prior and process.t_max == pytest.approx(fitted["z_max"])
    assert process.fit(x, seed=0) == {} and udm.get_process("pfgm").fit(x, seed=0) == fitted
    assert udm.get_process("pfgm").bind(None).network_options() == {}


def test_pfgm_parameterization_round_trip_and_p2_target() -> None:
    """x0 -> v_x -> x0 is exact; v from the batch posterior mean is P2's sqrt(N) E / (|E| + gamma)."""
    process = udm.get_process("pfgm", z_max=20.0)
    gen = torch.Generator().manual_seed(5)
    ref = torch.randn(64, 6, generator=gen, dtype=torch.float64)
    x = 3 * torch.randn(16, 6, generator=gen, dtype=torch.float64)
    z = 0.1 + 5 * torch.rand(16, generator=gen, dtype=torch.float64)
    for gamma in (0.0, 5.0):
        par = PFGMParameterization(gamma=gamma)
        x0 = empirical_posterior_mean(x, z, ref)
        v = udm.from_x0(x0, x, z, process, par)
        torch.testing.assert_close(udm.to_x0(v, x, z, process, par), x0, rtol=1e-9, atol=1e-9)
        # P2 written out: stable weights (min_k d_k / d_j)^(N+1), E = sum_j w_j (y_j - x, -z)
        d = torch.sqrt(torch.cdist(x, ref) ** 2 + z[:, None] ** 2)
        w = (d.min(1, keepdim=True).values / d) ** 7
        w = w / w.sum(1, keepdim=True)
        e = torch.cat([w @ ref - x, -z[:, None]], 1)
        p2 = math.sqrt(6) * e / (e.norm(dim=1, keepdim=True) + gamma)
        torch.testing.assert_close(v, p2[:, :6], rtol=1e-10, atol=1e-12)


def test_poisson_field_loss_on_the_exact_field_is_zero() -> None:
    """A network that outputs the batch's own normalized field has zero P2 loss; the loss uses `points` rows."""
    process = udm.get_process("pfgm", M=40)
    ref = torch.randn(32, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)

    class Field(torch.nn.Module):
        def forward(self, x_in, t_in):
            z = torch.exp(4 * t_in.to(torch.float64))
            x = x_in * torch.sqrt(z**2 + 0.25)[:, None]
            return udm.from_x0(empirical_posterior_mean(x, z, ref), x, z, process, PFGMParameterization())

    den = udm.Denoiser(Field(), process, "pfgm")
    loss = PoissonFieldLoss(points=8)(den, ref, generator=torch.Generator().manual_seed(7))
    assert loss.per_sample.shape == (8,) and float(loss.loss) < 1e-20
    with pytest.raises(ValueError, match="pfgm"):
        make_loss("x0", objective="poisson_field")
    with pytest.raises(ValueError, match="perturbation"):
        PoissonFieldLoss()(udm.Denoiser(Field(), udm.get_process("edm"), "x0"), ref)


def _exact(process) -> udm.Denoiser:
    """The exact x0 denoiser of POINTS under ``process``'s kernel."""

    class Net(torch.nn.Module):
        def forward(self, x, t):
            return POINTS.posterior_mean(x, t.to(torch.float64), process)

    return udm.Denoiser(Net(), process, "x0")


def _landing(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d = torch.cdist(x.to(torch.float64), POINTS.points)
    return d.min(1).values, d.argmin(1)


def _exact_marginal(z_max: float, n: int, seed: int) -> torch.Tensor:
    """x = x_j + z_max * Cauchy with j ~ weights: the exact PFGM marginal at z = z_max (§6.3 item 4)."""
    g = torch.Generator().manual_seed(seed)
    j = POINTS.sample(n, g)
    eps = udm.get_noise({"name": "student_t", "D": 1.0}).sample((n, 2), g, dtype=torch.float64)
    return j + z_max * eps


@pytest.mark.parametrize(("sampler", "variable", "steps"), [("heun", "log_sigma", 60), ("heun", "sigma", 60), ("euler", "log_sigma", 200), ("rk45", "log_sigma", None)])
def test_exact_field_ode_lands_on_the_data_with_the_right_frequencies(sampler: str, variable: str, steps: int | None) -> None:
    """§6.3 item 4: from the exact marginal at z = 40, the exact-field ODE ends on the points, with their weights.

    P4's solvers: Heun, Euler and RK45 in log z (RK45 adaptive between z_max and z_min).
    The marginal at z is x_j + z Cauchy, whose tail |w| > k has mass ~ 1/k: with
    the paper's z_min = 1e-3 about 1% of the starts (|w| > 100) are still 0.1 away
    from their point when the ODE stops. z_min = 1e-7 puts that tail below 1e-4.
    """
    process = udm.get_process("pfgm", z_max=40.0, z_min=1e-7)
    x_T = _exact_marginal(40.0, 3000, 8)
    grid = {"steps": steps, "grid": "logsnr"} if steps else {"times": [40.0, 1e-7, 0.0], "rtol": 1e-6, "atol": 1e-8}
    x0 = udm.sample(_exact(process), sampler, x_T=x_T, variable=variable, **grid)
    dist, idx = _landing(x0)
    assert float(dist.max()) < 1e-3
    freq = torch.bincount(idx, minlength=3).double() / 3000
    se = torch.sqrt(POINTS.weights * (1 - POINTS.weights) / 3000)
    assert bool(((freq - POINTS.weights).abs() < 4 * se).all()), freq


def test_normalized_and_unnormalized_fields_give_the_same_endpoints() -> None:
    """§6.3 item 5: the raw gravity field (F_x / F_z), the P2-normalized field and x0_hat drive identical ODEs."""
    process = udm.get_process("pfgm", z_max=40.0)
    x_T = _exact_marginal(40.0, 200, 9)
    times = udm.get_grid("logsnr", process, 60)
    via_x0 = udm.sample(_exact(process), "heun", x_T=x_T, times=times, variable="log_sigma")

    class Normalized(torch.nn.Module):  # outputs P2's sqrt(N) E / |E| (gamma = 0) from the exact posterior
        def forward(self, x_in, t_in):
            z = torch.exp(4 * t_in.to(torch.float64))
            x = x_in * torch.sqrt(z**2 + 0.25)[:, None]
            return udm.from_x0(POINTS.posterior_mean(x, z, process), x, z, process, PFGMParameterization())

    via_field = udm.sample(udm.Denoiser(Normalized(), process, "pfgm"), "heun", x_T=x_T, times=times, variable="log_sigma")

    def raw_field(x: torch.Tensor, z: float) -> torch.Tensor:  # unnormalized F = sum_j pi_j (x - x_j, z) / R_j^(N+1)
        diff = x[:, None, :] - POINTS.points[None]
        r3 = (diff.pow(2).sum(-1) + z * z) ** 1.5
        f_x = (POINTS.weights[None, :, None] * diff / r3[..., None]).sum(1)
        f_z = (POINTS.weights[None] * z / r3).sum(1)
        return f_x / f_z[:, None]  # dx/dz

    x = x_T.clone()
    ts = times.tolist()
    for t, s in zip(ts[:-2], ts[1:-1]):  # Heun in log z on dx/dlog z = z F_x / F_z, the same grid
        d1 = t * raw_field(x, t)
        x_pred = x + math.log(s / t) * d1
        x = x + math.log(s / t) * 0.5 * (d1 + s * raw_field(x_pred, s))
    torch.testing.assert_close(via_field, via_x0, rtol=0, atol=1e-9)
    before_last = udm.sample(_exact(process), "heun", x_T=x_T, times=times[:-1], variable="log_sigma")
    torch.testing.assert_close(before_last, x, rtol=0, atol=1e-8)


def test_pfgmpp_radius_law_is_beta() -> None:
    """§7.4: with r = sigma sqrt(D), |x - y|^2 / (|x - y|^2 + r^2) ~ Beta(N/2, D/2)."""
    for n_dim, big_d in ((3, 1.0), (8, 16.0), (20, 128.0)):
        process = udm.get_process("pfgmpp", D=big_d)
        y = torch.zeros(3000, n_dim, dtype=torch.float64)
        eps = process.sample_noise(y.shape, torch.Generator().manual_seed(10), dtype=torch.float64)
        sigma = 0.7
        diff = process.corrupt(y, sigma, eps) - y
        r2 = (diff**2).sum(1).numpy()
        b = r2 / (r2 + sigma**2 * big_d)
        assert stats.kstest(b, stats.beta(n_dim / 2, big_d / 2).cdf).pvalue > 0.01


def test_student_t_log_density_is_scipy_multivariate_t() -> None:
    law = udm.get_noise({"name": "student_t", "D": 5.0})
    eps = torch.randn(10, 3, generator=torch.Generator().manual_seed(11), dtype=torch.float64) * 2
    expected = stats.multivariate_t(loc=np.zeros(3), shape=np.eye(3), df=5.0).logpdf(eps.numpy())
    np.testing.assert_allclose(law.log_prob(eps).numpy(), expected, rtol=1e-12)


def test_pfgmpp_at_large_d_is_edm() -> None:
    """§7.4: D -> inf with r = sigma sqrt(D) is EDM: the kernel's radius law and the exact-field ODE coincide."""
    d = 10
    big = udm.get_process("pfgmpp", D=1e6)
    edm = udm.get_process("edm")
    eps = big.sample_noise((4000, d), torch.Generator().manual_seed(12), dtype=torch.float64)
    assert stats.kstest(eps.norm(dim=1).numpy(), stats.chi(d).cdf).pvalue > 0.01
    x = torch.randn(50, d, generator=torch.Generator().manual_seed(13), dtype=torch.float64) * 3
    x0 = torch.randn(50, d, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    t = torch.full((50,), 2.0, dtype=torch.float64)
    gap = (big.log_kernel(x, x0, t) - edm.log_kernel(x, x0, t)).abs().max()
    assert float(gap) < 1e-3

    points = PointMasses(torch.randn(4, 2, generator=torch.Generator().manual_seed(15), dtype=torch.float64))

    def exact(process):
        class Net(torch.nn.Module):
            def forward(self, x, t):
                return points.posterior_mean(x, t.to(torch.float64), process)

        return udm.Denoiser(Net(), process, "x0")

    x_T = 80.0 * torch.randn(300, 2, generator=torch.Generator().manual_seed(16), dtype=torch.float64)
    out = {name: udm.sample(exact(p), "heun", steps=30, x_T=x_T) for name, p in (("big", big), ("edm", edm))}
    small = udm.sample(exact(udm.get_process("pfgmpp", D=4.0)), "heun", steps=30, x_T=x_T)
    gap_big = float((out["big"] - out["edm"]).norm(dim=1).max())
    gap_small = float((small - out["edm"]).norm(dim=1).max())
    assert gap_big < 1e-3 < gap_small


def test_exponential_integrators_serve_non_gaussian_linear_processes() -> None:
    """DPM-Solver++ only uses the linear path, so on PFGM++ (Student-t noise) it converges to the same ODE solution as Heun."""
    process = udm.get_process("pfgmpp", D=3.0)
    x_T = process.prior((200, 2), torch.Generator().manual_seed(17), dtype=torch.float64)
    reference = udm.sample(_exact(process), "heun", steps=400, x_T=x_T)
    errors = [float((udm.sample(_exact(process), "dpmpp_2m", steps=k, x_T=x_T) - reference).norm(dim=1).max()) for k in (10, 40)]
    assert errors[1] < 1e-2 and errors[1] < errors[0] / 4, errors
