"""The heat-equation ODE (THEORY §5): a user sigma_t, the VE process seen through the ODE lens."""

from __future__ import annotations

import math

import pytest
import torch

import udm
from udm.theory.gmm import GaussianMixture

F64 = torch.float64


def test_heat_clock_from_a_formula() -> None:
    """sigma' by autograd equals the analytic derivative; the inverse clock inverts sigma."""
    p = udm.get_process("heat", sigma="3 * sinh(2 * t)", t_max=2.0)
    t = torch.linspace(0.01, 2.0, 50, dtype=F64)
    torch.testing.assert_close(p.dsigma(t), 6 * torch.cosh(2 * t), rtol=1e-12, atol=0)
    torch.testing.assert_close(p.t_from_sigma_tilde(p.sigma(t)), t, rtol=0, atol=1e-10)
    assert float(p.alpha(t).min()) == 1.0


@pytest.mark.parametrize(
    ("formula", "message"),
    [("1 + t", "sigma_0 must be 0"), ("t * (1 - t)", "increase strictly"), ("os.system('x')", "uses"), ("t +", "cannot parse")],
)
def test_heat_clock_rejects_bad_formulas(formula: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        udm.get_process("heat", sigma=formula)


def test_heat_equation_residual_for_gmm_data() -> None:
    """§5.3 item 1: p_t = p_0 * N(0, sigma_t^2) solves d_t p = sigma' sigma lap p, and the ODE's continuity residual vanishes."""
    process = udm.get_process("heat", sigma="2 * t**2 + t**3")
    gmm = GaussianMixture.isotropic([0.3, 0.7], [[1.0, -0.5], [-1.0, 0.8]], [0.3, 0.6])
    g = torch.Generator().manual_seed(0)
    x = (2 * torch.randn(20, 2, generator=g, dtype=F64)).requires_grad_(True)
    t = (0.1 + 0.8 * torch.rand(20, generator=g, dtype=F64)).requires_grad_(True)
    p = gmm.log_prob(x, t, process).exp()
    (dp_dt,) = torch.autograd.grad(p.sum(), t, create_graph=True)
    (grad,) = torch.autograd.grad(p.sum(), x, create_graph=True)
    lap = sum(torch.autograd.grad(grad[:, k].sum(), x, retain_graph=True)[0][:, k] for k in range(2))
    d = (process.dsigma(t) * process.sigma(t)).detach()
    heat = dp_dt - d * lap
    assert float((heat.abs() / (dp_dt.abs() + (d * lap).abs())).max().detach()) < 1e-10
    # continuity with f = -sigma' sigma grad log p_t: d_t p + div(p f) = d_t p - D lap p
    flux = -d[:, None] * grad
    div = sum(torch.autograd.grad(flux[:, k].sum(), x, retain_graph=True)[0][:, k] for k in range(2))
    assert float(((dp_dt + div).abs() / dp_dt.abs().clamp_min(1e-12)).max().detach()) < 1e-8


def test_exact_transport_of_gaussian_data() -> None:
    """§5.3 item 2: for N(mu, s^2 I) data the ODE flow is x_t - mu = (x0 - mu) sqrt((s^2 + sigma_t^2) / s^2)."""
    process = udm.get_process("heat", sigma="10 * t**2")
    mu, s = torch.tensor([0.5, -1.0], dtype=F64), 0.7
    gmm = GaussianMixture.isotropic([1.0], mu[None], [s])
    x0 = gmm.sample(64, torch.Generator().manual_seed(1))
    scale = lambda t: math.sqrt((s**2 + float(process.sigma(t)) ** 2) / s**2)  # noqa: E731
    x_T = mu + (x0 - mu) * scale(1.0)
    times = torch.tensor([1.0, 0.5, 0.05], dtype=F64)
    path = []
    out = udm.sample(gmm.denoiser(process, "x0"), "rk45", x_T=x_T, times=times, rtol=1e-10, atol=1e-10, variable="t",
                     callback=lambda st: path.append(st["x"]))
    torch.testing.assert_close(path[0], mu + (x0 - mu) * scale(0.5), rtol=0, atol=1e-7)
    torch.testing.assert_close(out, mu + (x0 - mu) * scale(0.05), rtol=0, atol=1e-7)


def test_heat_is_edm_and_ve_through_the_ode_lens() -> None:
    """sigma_t = t on [0, 80] is EDM's clock: same coefficients, same samples from the same denoiser and start."""
    heat = udm.get_process("heat", sigma="t", t_max=80.0, t_eps=0.002)
    edm = udm.get_process("edm")
    t = torch.linspace(0.002, 80.0, 17, dtype=F64)
    for name in ("alpha", "sigma", "dalpha", "dsigma", "log_snr"):
        torch.testing.assert_close(getattr(heat, name)(t), getattr(edm, name)(t), rtol=1e-12, atol=0)
    gmm = GaussianMixture.isotropic([0.5, 0.5], [[1.0, 1.0], [-1.0, 0.0]], [0.2, 0.4])
    x_T = 80 * torch.randn(100, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    a = udm.sample(gmm.denoiser(heat, "x0"), "heun", steps=20, x_T=x_T, grid="karras")
    b = udm.sample(gmm.denoiser(edm, "x0"), "heun", steps=20, x_T=x_T, grid="karras")
    torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
    # VE's geometric sigma, written as a heat clock (sigma_0 = 0 replaced by a smooth start)
    ve = udm.get_process("ve")
    geometric = udm.get_process("heat", sigma="0.01 * expm1(t * log(5000.0)) + 0.01 * (1 - exp(-t / 1e-6))", t_eps=1e-3)
    s = torch.linspace(0.01, 1.0, 10, dtype=F64)
    torch.testing.assert_close(geometric.sigma(s), ve.sigma(s), rtol=1e-9, atol=0)
