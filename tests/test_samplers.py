"""Samplers: solver order, the reverse-SDE family, equivalences, reproducibility and input errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import udm
from udm.metrics import mmd
from udm.theory import GaussianMixture

F64 = torch.float64


def gmm2d() -> GaussianMixture:
    covs = torch.tensor([[[0.30, 0.10], [0.10, 0.20]], [[0.15, -0.05], [-0.05, 0.25]], [[0.10, 0.0], [0.0, 0.40]]])
    return GaussianMixture([0.5, 0.3, 0.2], [[-1.5, 0.0], [1.5, 1.0], [0.5, -1.5]], covs)


def null_mmd_bound(gmm: GaussianMixture, n: int, repeats: int = 12, seed: int = 1000) -> float:
    """mean + 4 std of the unbiased MMD between two independent n-samples of the data (the Monte-Carlo floor)."""
    vals = [float(mmd(gmm.sample(n, seed + 2 * i), gmm.sample(n, seed + 2 * i + 1))) for i in range(repeats)]
    return float(np.mean(vals) + 4 * np.std(vals))


# --- solver order on Gaussian data, whose PF-ODE flow is closed form (THEORY §5.3 item 2) ---------
MU, S = 0.7, 0.5


def exact_flow(process, x, t0: float, t1: float) -> torch.Tensor:
    """x~ - mu scales by sqrt((s^2 + sigma~^2)/(s^2 + sigma~_0^2)) along the PF-ODE (x~ = x/alpha)."""
    st0, st1 = float(process.sigma_tilde(t0)), float(process.sigma_tilde(t1))
    y = x / float(process.alpha(t0))
    y1 = MU + (y - MU) * math.sqrt((S**2 + st1**2) / (S**2 + st0**2))
    return y1 * float(process.alpha(t1))


def measured_order(sampler: str, process, t0: float, t1: float, ns=(16, 32, 64, 128), **options) -> float:
    gauss = GaussianMixture.isotropic([1.0], [[MU] * 3], S)
    den = gauss.denoiser(process, "eps")
    x_T = udm.rng.randn((64, 3), 0, dtype=F64) * 2.0
    ref = exact_flow(process, x_T, t0, t1)
    errs = []
    for n in ns:
        times = process.t_from_log_snr(torch.linspace(float(process.log_snr(t0)), float(process.log_snr(t1)), n + 1, dtype=F64))
        times[0], times[-1] = t0, t1
        out = udm.sample(den, sampler, times=times, x_T=x_T.clone(), **options)
        errs.append(float((out - ref).abs().max()))
    slope = -np.polyfit(np.log(ns), np.log(errs), 1)[0]
    return slope


@pytest.mark.parametrize(
    "sampler,order,options",
    # the multistep start-up error partly cancels the asymptotic error at few steps: measure further out
    [("euler", 1, {}), ("heun", 2, {}), ("dpmpp_2m", 2, {"lower_order_final": False, "ns": (32, 64, 128, 256)})],
)
@pytest.mark.parametrize("name", ["vp", "ve", "edm"])
def test_solver_convergence_order(sampler, order, options, name):
    process = udm.get_process(name)
    t0, t1 = (0.8, 0.05) if name in ("vp", "ve") else (20.0, 0.05)
    slope = measured_order(sampler, process, t0, t1, **options)
    assert abs(slope - order) < 0.2, f"{sampler} on {name}: slope {slope:.3f}, expected {order}"


def test_euler_in_t_is_first_order_for_vp():
    slope = measured_order("euler", udm.get_process("vp"), 0.8, 0.05, variable="t")
    assert abs(slope - 1) < 0.2


def test_rk45_reaches_exact_flow_and_reports_nfe():
    process = udm.get_process("vp")
    gauss = GaussianMixture.isotropic([1.0], [[MU] * 3], S)
    x_T = udm.rng.randn((16, 3), 1, dtype=F64)
    out, info = udm.sample(gauss.denoiser(process, "eps"), "rk45", times=[0.9, 0.02], x_T=x_T, rtol=1e-9, atol=1e-9, return_info=True)
    err = float((out - exact_flow(process, x_T, 0.9, 0.02)).abs().max())
    assert err < 1e-6
    loose, loose_info = udm.sample(gauss.denoiser(process, "eps"), "rk45", times=[0.9, 0.02], x_T=x_T, rtol=1e-4, atol=1e-4, return_info=True)
    assert float((loose - exact_flow(process, x_T, 0.9, 0.02)).abs().max()) > 10 * err
    assert info["nfe"] > loose_info["nfe"] > 5


# --- equivalences ----------------------------------------------------------------------------------
def test_euler_in_sigma_is_ddim_and_ddpm_is_ddim_eta_one():
    gmm, process = gmm2d(), udm.get_process("ddpm")
    den = gmm.denoiser(process, "eps")
    x_T = process.prior((256, 2), 3, dtype=F64)
    a = udm.sample(den, "euler", steps=20, x_T=x_T)
    b = udm.sample(den, "ddim", steps=20, x_T=x_T)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    c = udm.sample(den, "ddpm", steps=20, x_T=x_T, generator=7)
    d = udm.sample(den, "ddim", steps=20, x_T=x_T, generator=7, eta=1.0)
    torch.testing.assert_close(c, d, rtol=1e-10, atol=1e-10)


def test_udm_k1_loop_equals_ddim():
    gmm, process = gmm2d(), udm.get_process("vp")
    den = gmm.denoiser(process, "x0")
    x_T = process.prior((128, 2), 4, dtype=F64)
    torch.testing.assert_close(
        udm.sample(den, "udm_deterministic", steps=15, x_T=x_T), udm.sample(den, "ddim", steps=15, x_T=x_T), rtol=1e-12, atol=1e-12
    )


# --- Part 9's reverse-SDE family (THEORY §2.1, §9.3) -----------------------------------------------
@pytest.mark.parametrize("diffusion", ["sde", 0.5, 2.0, "ode", lambda t: 0.3 + t])
def test_reverse_sde_family_reaches_data(diffusion):
    gmm, process = gmm2d(), udm.get_process("vp")
    n = 3000
    # exact p_T: x0 ~ data pushed through F_T
    x_T = process.corrupt(gmm.sample(n, 11), process.t_max, udm.rng.randn((n, 2), 12, dtype=F64))
    times = udm.get_grid("uniform", process, 400)
    out = udm.sample(gmm.denoiser(process, "eps"), "euler_maruyama", times=times, x_T=x_T, generator=13, diffusion=diffusion)
    assert float(mmd(out, gmm.sample(n, 14))) < null_mmd_bound(gmm, n)


def test_reverse_sde_with_wrong_drift_fails():
    """Negative control: drop the sigma_r^2 part of the drift (only g^2/2) with sigma_r = 2g; the marginals drift away."""
    gmm, process = gmm2d(), udm.get_process("vp")
    n = 3000
    x_T = process.corrupt(gmm.sample(n, 11), process.t_max, udm.rng.randn((n, 2), 12, dtype=F64))

    def wrong(den, proc, x, times, *, generator=None, callback=None):
        gen = udm.rng.as_generator(generator)
        ts = times.tolist()
        for t, s in zip(ts[:-1], ts[1:]):
            x0 = den(x, t)
            if s == 0:
                return x0
            f, g2 = (float(v) for v in proc.sde(t))
            score = udm.from_x0(x0, x, t, proc, "score")
            h = t - s
            x = x - h * (f * x - 0.5 * g2 * score) + (4 * g2 * h) ** 0.5 * udm.rng.randn_like(x, gen)
        return x

    out = wrong(udm.samplers.run._Tracked(gmm.denoiser(process, "eps"), process, None, udm.get_grid("uniform", process, 400), True),
                process, x_T, udm.get_grid("uniform", process, 400), generator=13)
    assert float(mmd(out, gmm.sample(n, 14))) > 10 * null_mmd_bound(gmm, n)


def test_pc_sampler_reaches_data():
    gmm, process = gmm2d(), udm.get_process("ve")
    n = 3000
    out = udm.sample(gmm.denoiser(process, "eps"), "pc", steps=200, shape=(n, 2), dtype=F64, generator=5, snr=0.1)
    assert float(mmd(out, gmm.sample(n, 14))) < null_mmd_bound(gmm, n)


# --- reproducibility -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sampler,options",
    [("ddpm", {}), ("ddim", {"eta": 0.5}), ("euler_maruyama", {}), ("heun", {"churn": 10.0}), ("pc", {"per_sample_norms": True}), ("udm_baseline", {})],
)
def test_same_seed_same_sample_alone_or_in_batch(sampler, options):
    gmm, process = gmm2d(), udm.get_process("vp")
    den = gmm.denoiser(process, "eps")
    seeds = list(range(100, 164))
    batch = udm.sample(den, sampler, steps=12, shape=(64, 2), seeds=seeds, dtype=F64, **options)
    alone = udm.sample(den, sampler, steps=12, shape=(1, 2), seeds=[seeds[37]], dtype=F64, **options)
    torch.testing.assert_close(alone[0], batch[37], rtol=1e-12, atol=1e-12)
    other = udm.sample(den, sampler, steps=12, shape=(1, 2), seeds=[seeds[38]], dtype=F64, **options)
    assert not torch.allclose(other[0], batch[37])


def test_float32_network_keeps_float64_schedule_arithmetic():
    gmm, process = gmm2d(), udm.get_process("ddpm")
    x_T = process.prior((64, 2), 0, dtype=F64)
    ref = udm.sample(gmm.denoiser(process, "eps"), "dpmpp_2m", steps=10, x_T=x_T)
    out = udm.sample(gmm.denoiser(process, "eps"), "dpmpp_2m", steps=10, x_T=x_T.float())
    assert out.dtype == torch.float32
    assert float((out.double() - ref).abs().max()) < 1e-4


# --- grids -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ddpm", "vp", "vp_cosine", "subvp", "ve", "edm"])
@pytest.mark.parametrize("grid", ["uniform", "quadratic", "karras", "logsnr"])
def test_grids_are_decreasing_and_end_clean(name, grid):
    process = udm.get_process(name)
    times = udm.get_grid(grid, process, 7)
    assert times.shape == (8,) and times.dtype == F64
    assert (times[1:] < times[:-1]).all()
    assert float(times[-1]) == process.t_min and float(times[0]) == pytest.approx(process.t_max)


def test_karras_grid_matches_formula_and_logsnr_grid_is_uniform():
    edm = udm.get_process("edm")
    times = udm.get_grid("karras", edm, 10)
    i = torch.arange(10, dtype=F64)
    rho, smax, smin = 7.0, 80.0, 0.002
    expected = (smax ** (1 / rho) + i / 9 * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    torch.testing.assert_close(times[:-1], expected, rtol=1e-12, atol=1e-12)
    vp = udm.get_process("vp")
    lam = vp.log_snr(udm.get_grid("logsnr", vp, 10)[:-1])
    torch.testing.assert_close(lam.diff(), lam.diff()[:1].expand(9), rtol=1e-9, atol=1e-9)


def test_ddpm_discrete_uniform_grid_is_integer_trailing_spacing():
    times = udm.get_grid("uniform", udm.get_process("ddpm"), 10)
    assert times.tolist() == [1000.0, 900.0, 800.0, 700.0, 600.0, 500.0, 400.0, 300.0, 200.0, 100.0, 0.0]


# --- bad input: one clear error each ---------------------------------------------------------------
@pytest.fixture
def oracle():
    process = udm.get_process("vp")
    return gmm2d().denoiser(process, "eps"), process


def test_unknown_sampler_lists_valid_names(oracle):
    den, _ = oracle
    with pytest.raises(ValueError, match=r"unknown sampler 'dpm\+\+'.*valid samplers: .*ddim.*dpmpp_2m"):
        udm.sample(den, "dpm++", steps=5, shape=(4, 2))


def test_unknown_grid_lists_valid_names(oracle):
    den, _ = oracle
    with pytest.raises(ValueError, match=r"unknown grid 'cosine'.*valid grids: .*karras.*logsnr"):
        udm.sample(den, "ddim", steps=5, shape=(4, 2), grid="cosine")


@pytest.mark.parametrize("steps", [0, -3])
def test_steps_below_one(oracle, steps):
    den, _ = oracle
    with pytest.raises(ValueError, match=rf"steps must be an integer >= 1, got {steps}"):
        udm.sample(den, "ddim", steps=steps, shape=(4, 2))


def test_grid_not_decreasing(oracle):
    den, _ = oracle
    with pytest.raises(ValueError, match=r"strictly decreasing.*times\[1\]=0.5 <= times\[2\]=0.7"):
        udm.sample(den, "ddim", times=[0.9, 0.5, 0.7, 0.0], shape=(4, 2))


def test_grid_outside_domain(oracle):
    den, _ = oracle
    with pytest.raises(ValueError, match=r"leaves the domain of process 'vp'.*\[0, 1\]"):
        udm.sample(den, "ddim", times=[1.5, 0.5, 0.0], shape=(4, 2))


def test_denoiser_output_shape_mismatch():
    process = udm.get_process("vp")
    den = udm.Denoiser(lambda x, t: x[:, :1], process, "eps")
    with pytest.raises(ValueError, match=r"shape \(4, 1\) but x_t has shape \(4, 2\)"):
        udm.sample(den, "ddim", steps=3, shape=(4, 2))


def test_nan_from_denoiser_names_the_step():
    process = udm.get_process("vp")

    def net(x, t):
        return torch.where(t[:, None] < 0.5, torch.full_like(x, float("nan")), torch.zeros_like(x))

    with pytest.raises(FloatingPointError, match=r"NaN or inf at step 3 of 5 \(t=0.4"):
        udm.sample(udm.Denoiser(net, process, "eps"), "ddim", steps=5, shape=(4, 2))


def test_unknown_sampler_option(oracle):
    den, _ = oracle
    with pytest.raises(ValueError, match=r"sampler 'euler' has no option 'eta'; its options: churn, churn_noise, churn_tmax, churn_tmin, noise, variable"):
        udm.sample(den, "euler", steps=3, shape=(4, 2), eta=0.3)


def test_steps_disagreeing_with_explicit_grid(oracle):
    den, _ = oracle
    with pytest.raises(ValueError, match=r"steps=4 disagrees with the explicit grid of 2 steps"):
        udm.sample(den, "ddim", steps=4, times=[1.0, 0.5, 0.0], shape=(4, 2))
