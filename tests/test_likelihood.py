"""Exact likelihood through the continuity equation (THEORY §5.2 O3, §5.3 items 2 and 4, §10.4)."""

from __future__ import annotations

import math

import pytest
import torch

import udm
from udm.likelihood import bits_per_dim, dequantization_offset, dequantize, flow, log_likelihood, prior_log_prob
from udm.theory import GaussianMixture

F64 = torch.float64
GMM = GaussianMixture.isotropic([0.6, 0.3, 0.1], [[-1.5, 0.0], [1.5, 0.5], [0.0, 2.0]], [0.4, 0.3, 0.3])


def _exact(mixture: GaussianMixture, process):
    """The exact denoiser of ``mixture`` and its exact marginal at t_max as the prior."""
    return mixture.denoiser(process, "x0"), (lambda x: mixture.log_prob(x, process.t_max, process))


@pytest.mark.parametrize("name, variable", [("vp", "t"), ("ve", "sigma"), ("edm", None)])
def test_gaussian_data_reproduces_the_normal_log_density(name: str, variable: str | None) -> None:
    """§5.3 item 2: data N(mu, s^2 I) with the exact score gives log N(x0; mu, s^2 I + sigma_t0^2) to solver tolerance."""
    process = udm.get_process(name)
    gauss = GaussianMixture.isotropic([1.0], [[0.5, -1.0, 2.0]], [0.7])
    den, prior = _exact(gauss, process)
    x0 = gauss.sample(32, torch.Generator().manual_seed(0))
    result = log_likelihood(den, x0, prior=prior, divergence="exact", rtol=1e-7, atol=1e-7, variable=variable)
    torch.testing.assert_close(result.log_p, gauss.log_prob(x0, process.t_eps, process), rtol=0, atol=1e-4)
    assert result.nfe > 10 and result.divergence == "exact"


def test_gmm_log_likelihood_within_a_thousandth_of_a_nat() -> None:
    """§5.3 item 4: a 2-D GMM through RK45 at rtol 1e-6 is within 1e-3 nats of the closed form."""
    process = udm.get_process("vp")
    den, prior = _exact(GMM, process)
    x0 = GMM.sample(128, torch.Generator().manual_seed(1))
    result = log_likelihood(den, x0, prior=prior, divergence="exact", rtol=1e-6, atol=1e-6)
    assert (result.log_p - GMM.log_prob(x0, process.t_eps, process)).abs().max() < 1e-3


def test_default_prior_is_the_samplers_starting_law() -> None:
    """Without an exact prior, log p_T is that of sigma_T eps: close to the truth for VP, whose alpha_T ~ 0.007."""
    process = udm.get_process("vp")
    x = torch.randn(5, 2, dtype=F64)
    torch.testing.assert_close(prior_log_prob(process, x), -0.5 * (x**2).sum(1) / float(process.sigma(1.0)) ** 2
                               - math.log(2 * math.pi * float(process.sigma(1.0)) ** 2))
    den, _ = _exact(GMM, process)
    x0 = GMM.sample(64, torch.Generator().manual_seed(2))
    approx = log_likelihood(den, x0, divergence="exact", rtol=1e-6, atol=1e-6)
    assert (approx.log_p - GMM.log_prob(x0, process.t_eps, process)).abs().max() < 0.02


def test_hutchinson_agrees_with_the_exact_divergence_and_its_interval_covers_at_the_nominal_rate() -> None:
    """Per sample, K Hutchinson probes give an estimate, a standard error and a 90% Student-t interval; over 400
    samples of a 10-D mixture the interval covers the exact log p for 90% of them (binomial 3-sigma band), and the
    estimate is unbiased. (With few probes the per-probe integrals are skewed and the t-interval under-covers:
    8 Rademacher probes cover 82% here, 32 about 88%, 64 about 90%.)"""
    process = udm.get_process("vp")
    means = 1.5 * torch.randn(3, 10, generator=torch.Generator().manual_seed(7), dtype=F64)
    mixture = GaussianMixture.isotropic([0.5, 0.3, 0.2], means, [0.5, 0.8, 0.6])
    den, prior = _exact(mixture, process)
    x0 = mixture.sample(400, torch.Generator().manual_seed(3))
    exact = log_likelihood(den, x0, prior=prior, divergence="exact", rtol=1e-6, atol=1e-6).log_p
    for probe in ("rademacher", "gaussian"):
        est = log_likelihood(den, x0, prior=prior, probes=64, probe=probe, rtol=1e-4, atol=1e-4, generator=torch.Generator().manual_seed(4))
        lo, hi = est.interval(0.9)
        coverage = float(((lo <= exact) & (exact <= hi)).double().mean())
        assert abs(coverage - 0.9) < 3 * math.sqrt(0.9 * 0.1 / 400), (probe, coverage)
        error = est.probe_log_p - exact[:, None]  # unbiased: the mean error is within 3 of its standard errors
        assert abs(float(error.mean())) < 3 * float(error.std()) / math.sqrt(error.numel()), probe
    with pytest.raises(ValueError, match="at least 2 Hutchinson probes"):
        log_likelihood(den, x0[:4], prior=prior, probes=1).interval()


def test_encode_decode_round_trip_and_opposite_log_density_changes() -> None:
    """Encoding x0 -> x_T and decoding back returns x0; the reverse pass's log-density change is minus the forward's."""
    process = udm.get_process("edm")
    den, _ = _exact(GMM, process)
    x0 = GMM.sample(32, torch.Generator().manual_seed(5))
    x_T, forward, _ = flow(den, x0, process.t_eps, process.t_max, divergence="exact", rtol=1e-8, atol=1e-8)
    back, reverse, _ = flow(den, x_T, process.t_max, process.t_eps, divergence="exact", rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(back, x0, rtol=0, atol=1e-5)
    torch.testing.assert_close(reverse, -forward, rtol=0, atol=1e-5)
    assert float(x_T.std()) > 20  # the code really reached sigma = 80


@pytest.mark.parametrize(
    "process, t0",
    [(udm.get_process("rectified_flow", noise="uniform"), 0.5), (udm.get_process("pfgmpp", D=4.0), 0.5)],
    ids=["rectified_flow-uniform", "pfgmpp"],
)
def test_non_gaussian_noise_laws(process, t0: float) -> None:
    """Flow matching with a box prior and PFGM++ (Student-t): one data point c makes p_t the law of alpha c + sigma eps,
    log p_t(x) = log q((x - alpha c)/sigma) - D log sigma, which O3 must reproduce with the noise law's own log q."""
    point = torch.tensor([[0.3, -0.2]], dtype=F64)
    den = udm.Denoiser(lambda x, t: point.expand_as(x), process, "x0")

    def exact(x: torch.Tensor, t: float) -> torch.Tensor:
        a, s = float(process.alpha(t)), float(process.sigma(t))
        return process.noise.log_prob((x - a * point) / s) - x.shape[1] * math.log(s)

    x = (1 - t0) * point + 0.3 * t0 * torch.rand(8, 2, generator=torch.Generator().manual_seed(6), dtype=F64)
    result = log_likelihood(den, x, t0=t0, prior=lambda x_T: exact(x_T, process.t_max), divergence="exact", rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(result.log_p, exact(x, t0), rtol=0, atol=1e-6)


def test_dequantization_and_bits_per_dim() -> None:
    """Level k of L -> 2 (k + u)/L - 1 stays in its cell of width 2/L; bpd adds the documented log2(L/2) offset."""
    for levels in (256, 17):
        k = torch.arange(levels, dtype=torch.float32).repeat(3)
        x = (2 * k / (levels - 1) - 1.0).reshape(1, 1, 1, -1)
        deq = dequantize(x, levels, torch.Generator().manual_seed(0))
        cell = torch.floor((deq.double() + 1.0) * levels / 2).flatten()
        torch.testing.assert_close(cell, k.double())
        assert float((deq.double() - (2 * k / levels - 1)).std()) > 0.5 / levels  # u really varies within the cell
    assert dequantization_offset(256) == 7.0 and dequantization_offset(17) == math.log2(8.5)
    uniform = torch.tensor([-256 * math.log(2.0)], dtype=F64)  # density 2^-256... of a D = 256 uniform on [-1, 1]^D
    torch.testing.assert_close(bits_per_dim(uniform, 256), torch.tensor([8.0], dtype=F64))


def test_likelihood_errors() -> None:
    process = udm.get_process("rectified_flow")
    den, _ = _exact(GMM, udm.get_process("vp"))
    x0 = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(ValueError, match="divergence must be one of exact, hutchinson"):
        log_likelihood(den, x0, divergence="trace")
    with pytest.raises(ValueError, match="probes must be >= 1"):
        log_likelihood(den, x0, probes=0)
    rf = udm.Denoiser(lambda x, t: torch.zeros_like(x), process, "x0")
    with pytest.raises(ValueError, match="alpha vanishes"):
        log_likelihood(rf, x0, variable="sigma")


def test_progress_bar_is_silent_by_default_and_changes_nothing(capsys) -> None:
    """log_likelihood(progress=True) shows the share of the range integrated and the NFE on stderr; same numbers."""
    process = udm.get_process("vp")
    den, prior = _exact(GMM, process)
    x0 = GMM.sample(16, torch.Generator().manual_seed(3))
    quiet = log_likelihood(den, x0, prior=prior, divergence="exact", rtol=1e-5, atol=1e-5)
    assert capsys.readouterr().err == ""
    loud = log_likelihood(den, x0, prior=prior, divergence="exact", rtol=1e-5, atol=1e-5, progress=True)
    err = capsys.readouterr().err
    assert "likelihood ODE" in err and f"NFE {loud.nfe}" in err and "100/100%" in err
    torch.testing.assert_close(quiet.log_p, loud.log_p, rtol=0, atol=0)
    assert quiet.nfe == loud.nfe
