"""Training objectives and time samplers (THEORY §3.2 U1, §4.1; ``udm.losses``, ``udm.objectives``).

* every weighting is the x0-space weight it claims: EDM's lambda(sigma) for
  ``prediction="edm"`` (VE and VP), MSE of the named parameterization's
  estimate, min-SNR and the likelihood weighting g^2 alpha^2 / sigma^4;
  all recomputed here from the network output and textbook formulas;
* the loss keeps float64 precision for float64 networks, and its gradient is
  the gradient of that reference;
* time samplers: support, normalization of ``log_density`` (with the clamped
  mass of the lognormal law), KS tests of the draws against the CDF of the
  stated density, change-of-variables checks of the density, DDPM's discrete
  t = 1..N, and unbiased importance weights;
* AdaptiveTime: uniform until full, p_k ~ sqrt(E[L^2]) mixed with uniform,
  weights 1 / (K p_k), unbiasedness, exact state round trip;
* errors name what is wrong and list the valid choices.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from torch import nn

import udm
from udm.losses import (
    TIME_SAMPLERS,
    AdaptiveTime,
    LogNormalTime,
    LogSNRTime,
    UniformTime,
    get_time_sampler,
)
from udm.objectives import WEIGHTINGS, DenoisingLoss
from udm.processes.base import Process
from udm.theory import GaussianMixture

PROCESS_NAMES = ["ddpm", "vp", "vp_cosine", "subvp", "ve", "edm", "rectified_flow"]
SAMPLER_PROCESSES = ["vp", "vp_cosine", "edm", "ve", "rectified_flow", "ddpm"]
KINDS = ["x0", "eps", "score", "v", "velocity", "edm"]
SIGMA_DATA = 0.5

GMM = GaussianMixture(
    [0.25, 0.5, 0.25],
    [[-1.0, 0.5, 0.0], [1.2, -0.4, 0.3], [0.0, 1.5, -1.0]],
    [[0.2, 0.3, 0.1], [0.5, 0.1, 0.2], [0.3, 0.3, 0.3]],
)


class TinyNet(nn.Module):
    """A small random MLP net(x_in, t_in) -> same shape as x_in (float64 by default)."""

    def __init__(self, dim: int = 3, hidden: int = 16, seed: int = 0, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim + 1, hidden, dtype=dtype)
        self.lin2 = nn.Linear(hidden, dim, dtype=dtype)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for prm in self.parameters():
                prm.copy_(0.7 * torch.randn(prm.shape, generator=g, dtype=torch.float64))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.to(x.dtype)
        feat = torch.cat([x, (t / (1.0 + t.abs()))[:, None]], 1)
        return self.lin2(torch.tanh(self.lin1(feat))) + 0.3 * x


def _times(p: Process, n: int = 16) -> torch.Tensor:
    """Times inside (t_eps, t_max), geometrically spread over the noise levels, non-integer for DDPM."""
    frac = torch.exp(torch.linspace(math.log(5e-4), math.log(0.93), n, dtype=torch.float64))
    return p.t_eps + frac * (p.t_max - p.t_eps) + 0.0137 * (p.t_max - p.t_eps) / n


def _batch(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x0 = GMM.sample(n, g)
    eps = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return x0, eps


def _col(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, 1)


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).flatten(1).mean(1)


def _truth(kind: str, p, t: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The textbook training target of ``kind`` from (x0, eps), independent of udm.denoiser."""
    tt = _col(t)
    a, s, da, ds = p.alpha(tt), p.sigma(tt), p.dalpha(tt), p.dsigma(tt)
    if kind == "x0":
        return x0
    if kind == "eps":
        return eps
    if kind == "score":
        return -eps / s
    if kind == "v":
        return a * eps - s * x0
    if kind == "velocity":
        return da * x0 + ds * eps
    if kind == "edm":
        st = s / a
        x_tilde = x0 + st * eps
        c_skip = SIGMA_DATA**2 / (st**2 + SIGMA_DATA**2)
        c_out = st * SIGMA_DATA / torch.sqrt(st**2 + SIGMA_DATA**2)
        return (x0 - c_skip * x_tilde) / c_out
    raise AssertionError(kind)


def _rel_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * 1e-12 * float(expected.abs().max()), check_dtype=False)


# ----------------------------------------------------------------------------- weightings


@pytest.mark.parametrize("name", ["edm", "vp", "ve", "vp_cosine"])
def test_edm_target_loss_is_karras_lambda_times_x0_error(name: str) -> None:
    """weighting="target" with prediction="edm": lambda(sigma~) ||D - x0||^2 (Karras et al. 2022, eq. 8)."""
    p = udm.get_process(name)
    net = TinyNet(seed=1)
    den = udm.Denoiser(net, p, "edm", sigma_data=SIGMA_DATA)
    x0, eps = _batch(seed=1)
    t = _times(p)
    out = DenoisingLoss("target")(den, x0, t=t, eps=eps)

    # EDM by hand, in the x / alpha (VE) coordinates: x~ = x0 + sigma~ eps
    tt = _col(t)
    st = p.sigma(tt) / p.alpha(tt)
    x_tilde = x0 + st * eps
    sd2 = SIGMA_DATA**2
    c_skip, c_out = sd2 / (st**2 + sd2), st * SIGMA_DATA / torch.sqrt(st**2 + sd2)
    c_in, c_noise = 1.0 / torch.sqrt(st**2 + sd2), 0.25 * torch.log(st.reshape(-1))
    with torch.no_grad():
        d = c_skip * x_tilde + c_out * net(c_in * x_tilde, c_noise)
    lam = (st.reshape(-1) ** 2 + sd2) / (st.reshape(-1) * SIGMA_DATA) ** 2
    expected = lam * _mse(d, x0)
    _rel_close(out.per_sample.detach(), expected, 1e-5)
    _rel_close(out.loss.detach(), expected.mean(), 1e-5)
    # the EDM denoiser is the library's x0_hat, and the weighting "edm" on it is the same loss
    x_t = p.corrupt(x0, t, eps)
    with torch.no_grad():
        _rel_close(den(x_t, t), d, 1e-9)
    same = DenoisingLoss("edm")(den, x0, t=t, eps=eps)
    _rel_close(same.per_sample.detach(), expected, 1e-5)
    # lambda really varies over the batch (the check is not a constant rescaling)
    assert float(lam.max() / lam.min()) > 10.0


@pytest.mark.parametrize("name", ["vp", "edm", "rectified_flow"])
def test_edm_weighting_on_another_parameterization(name: str) -> None:
    """weighting="edm" on an eps network: Karras' lambda(sigma~) times ||x0_hat - x0||^2."""
    p = udm.get_process(name)
    den = udm.Denoiser(TinyNet(seed=2), p, "eps")
    x0, eps = _batch(seed=2)
    t = _times(p)
    out = DenoisingLoss("edm")(den, x0, t=t, eps=eps)
    x_t = p.corrupt(x0, t, eps)
    with torch.no_grad():
        x0_hat = den(x_t, t)
    st = p.sigma(t) / p.alpha(t)
    lam = (st**2 + SIGMA_DATA**2) / (st * SIGMA_DATA) ** 2
    _rel_close(out.per_sample.detach(), lam * _mse(x0_hat, x0), 1e-5)


@pytest.mark.parametrize("prediction", ["x0", "v", "eps"])
@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_named_weighting_is_mse_of_that_estimate(name: str, prediction: str) -> None:
    """weighting=kind gives mean((kind_hat - kind)^2) with kind_hat = denoiser.predict(x_t, t, kind)."""
    p = udm.get_process(name)
    den = udm.Denoiser(TinyNet(seed=3), p, prediction)
    x0, eps = _batch(seed=3)
    t = _times(p)
    x_t = p.corrupt(x0, t, eps)
    for kind in KINDS:
        out = DenoisingLoss(kind)(den, x0, t=t, eps=eps)
        with torch.no_grad():
            hat = den.predict(x_t, t, kind)
        expected = _mse(hat, _truth(kind, p, t, x0, eps))
        _rel_close(out.per_sample.detach(), expected, 1e-5)
        _rel_close(out.objective, expected, 1e-5)
    # "target" is the network's own parameterization
    out = DenoisingLoss("target")(den, x0, t=t, eps=eps)
    with torch.no_grad():
        raw = den.raw(x_t, t)
    _rel_close(out.per_sample.detach(), _mse(raw, _truth(prediction, p, t, x0, eps)), 1e-5)


@pytest.mark.parametrize("gamma", [1.0, 5.0])
@pytest.mark.parametrize("name", ["vp", "ddpm", "ve", "rectified_flow", "subvp"])
def test_min_snr_and_likelihood_weightings(name: str, gamma: float) -> None:
    p = udm.get_process(name)
    den = udm.Denoiser(TinyNet(seed=4), p, "v")
    x0, eps = _batch(seed=4)
    t = _times(p)
    x_t = p.corrupt(x0, t, eps)
    with torch.no_grad():
        err = _mse(den(x_t, t), x0)
    a, s = p.alpha(t), p.sigma(t)
    snr = a**2 / s**2
    out = DenoisingLoss("min_snr", gamma=gamma)(den, x0, t=t, eps=eps)
    _rel_close(out.per_sample.detach(), torch.minimum(snr, torch.full_like(snr, gamma)) * err, 1e-5)
    # the cap binds for part of the batch only, so both branches are checked
    assert bool((snr > gamma).any()) and bool((snr < gamma).any())

    _, g2 = p.sde(t)
    out = DenoisingLoss("likelihood")(den, x0, t=t, eps=eps)
    _rel_close(out.per_sample.detach(), g2 * a**2 / s**4 * err, 1e-5)
    # g^2 alpha^2 / sigma^4 ||x0_hat - x0||^2 = g^2 ||score_hat - score||^2
    with torch.no_grad():
        score_err = _mse(den.predict(x_t, t, "score"), -eps / _col(s))
    _rel_close(out.per_sample.detach(), g2 * score_err, 1e-5)


@pytest.mark.parametrize("kind", ["x0", "eps", "v"])
def test_float64_loss_keeps_float64_precision(kind: str) -> None:
    """A float64 network's loss is computed in float64: a 1e-7 error is resolved to 1e-9 relative."""
    p = udm.get_process("vp")
    x0, eps = _batch(seed=5)
    t = _times(p)
    target = _truth(kind, p, t, x0, eps)
    dz = 1e-7 * torch.randn(target.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    den = udm.Denoiser(lambda x_in, t_in: target + dz, p, kind)
    out = DenoisingLoss("target")(den, x0, t=t, eps=eps)
    assert out.loss.dtype == torch.float64 and out.per_sample.dtype == torch.float64
    _rel_close(out.per_sample, _mse(dz, torch.zeros_like(dz)), 1e-6)


def test_low_precision_network_loss_is_float32() -> None:
    p = udm.get_process("vp")
    x0, eps = _batch(seed=6)
    t = _times(p)
    for dtype in (torch.float32, torch.bfloat16):
        den = udm.Denoiser(TinyNet(seed=6, dtype=dtype), p, "eps")
        out = DenoisingLoss("x0")(den, x0.to(dtype), t=t, eps=eps.to(dtype))
        assert out.per_sample.dtype == torch.float32
        assert bool(torch.isfinite(out.per_sample).all())


# ----------------------------------------------------------------------------- gradients and outputs


def test_loss_gradient_is_the_gradient_of_the_reference() -> None:
    p = udm.get_process("vp_cosine")
    net = TinyNet(seed=7)
    den = udm.Denoiser(net, p, "x0")
    x0, eps = _batch(seed=7)
    t = _times(p)
    out = DenoisingLoss("eps")(den, x0, t=t, eps=eps)
    grads = torch.autograd.grad(out.loss, list(net.parameters()))
    for gr in grads:
        assert bool(torch.isfinite(gr).all()) and float(gr.abs().max()) > 0.0
    x_t = p.corrupt(x0, t, eps)
    ref = _mse(den.predict(x_t, t, "eps"), eps).mean()
    ref_grads = torch.autograd.grad(ref, list(net.parameters()))
    for gr, rg in zip(grads, ref_grads):
        _rel_close(gr, rg, 1e-6)
    # a gradient step on the loss lowers it
    with torch.no_grad():
        for prm, gr in zip(net.parameters(), grads):
            prm -= 1e-3 * gr / max(float(out.loss.detach()), 1.0)
    assert float(DenoisingLoss("eps")(den, x0, t=t, eps=eps).loss.detach()) < float(out.loss.detach())


@pytest.mark.parametrize("sampler", [{"name": "lognormal", "importance": True}, {"name": "logsnr", "importance": True}, "adaptive"])
def test_loss_output_fields(sampler) -> None:
    p = udm.get_process("vp")
    den = udm.Denoiser(TinyNet(seed=8), p, "eps")
    loss = DenoisingLoss("x0", time_sampler=sampler)
    x0, _ = _batch(64, seed=8)
    out = loss(den, x0, generator=torch.Generator().manual_seed(8))
    assert out.per_sample.shape == (64,) and out.t.shape == (64,) and out.weight.shape == (64,)
    assert bool(((out.t >= p.t_eps) & (out.t <= p.t_max)).all())
    assert out.per_sample.requires_grad and not out.objective.requires_grad
    _rel_close(out.objective, (out.per_sample / out.weight).detach(), 1e-12)
    _rel_close(out.loss.detach(), out.per_sample.detach().mean(), 1e-12)
    if sampler != "adaptive":  # a fresh adaptive sampler is uniform: weights exactly 1
        assert float(out.weight.std()) > 0.0
    # the same generator seed reproduces the draw and the loss exactly
    again = loss(den, x0, generator=torch.Generator().manual_seed(8))
    assert torch.equal(again.t, out.t) and torch.equal(again.per_sample, out.per_sample)
    # and the draw is what DenoisingLoss.draw returns
    t, w, eps = loss.draw(p, x0, torch.Generator().manual_seed(8))
    assert torch.equal(t, out.t) and torch.equal(w, out.weight)
    given = loss(den, x0, t=t, w=w, eps=eps)
    assert torch.equal(given.per_sample, out.per_sample)


def test_given_times_are_kept_and_weights_default_to_one() -> None:
    p = udm.get_process("edm")
    den = udm.Denoiser(TinyNet(seed=9), p, "edm")
    loss = DenoisingLoss("target", time_sampler={"name": "lognormal", "importance": True})
    x0, eps = _batch(seed=9)
    t = _times(p)
    out = loss(den, x0, t=t, eps=eps)
    assert torch.equal(out.weight, torch.ones_like(t))
    # t given without eps: the noise is drawn, the given times are used
    out = loss(den, x0, generator=torch.Generator().manual_seed(9), t=t)
    assert torch.equal(out.t, t)
    assert out.per_sample.shape == (16,)
    assert not torch.equal(out.per_sample, loss(den, x0, t=t, eps=torch.zeros_like(x0)).per_sample)


# ----------------------------------------------------------------------------- time samplers


def _sampler(kind: str, p) -> tuple:
    """(sampler, support [a, b]) for the density checks."""
    if kind == "logsnr" and p.name == "rectified_flow":  # log-SNR(t_max = 1) = -inf: give a finite range
        b = 0.999
        return LogSNRTime(min_log_snr=float(p.log_snr(b))), (p.t_eps, b)
    return TIME_SAMPLERS.get(kind)(), (p.t_eps, p.t_max)


def _density_grid(s, p, a: float, b: float, n: int = 200_001) -> tuple[np.ndarray, np.ndarray]:
    """exp(log_density) on a log-spaced grid of [a, b] (the last point just inside b)."""
    b_in = b - 1e-9 * (b - a)
    grid = torch.exp(torch.linspace(math.log(a), math.log(b_in), n, dtype=torch.float64))
    grid[0], grid[-1] = a, b_in
    dens = torch.exp(s.log_density(p, grid))
    assert bool(torch.isfinite(dens).all())
    return grid.numpy(), dens.numpy()


def _lognormal_clamped_mass(s: LogNormalTime, p) -> tuple[float, float]:
    """P(t clamped to t_eps), P(t clamped to t_max) under log sigma~ ~ N(p_mean, p_std^2)."""
    lo = math.log(float(p.sigma_tilde(p.t_eps)))
    hi = math.log(float(p.sigma_tilde(p.t_max)))
    return float(stats.norm.cdf((lo - s.p_mean) / s.p_std)), float(stats.norm.sf((hi - s.p_mean) / s.p_std))


@pytest.mark.parametrize("kind", ["uniform", "lognormal", "logsnr", "loguniform", "adaptive"])
@pytest.mark.parametrize("name", SAMPLER_PROCESSES)
def test_time_sampler_support_normalization_and_law(name: str, kind: str) -> None:
    p = udm.get_process(name)
    s, (a, b) = _sampler(kind, p)
    n = 4000
    t, w = s(p, n, torch.Generator().manual_seed(10))
    assert t.dtype == torch.float64 and t.shape == (n,) and w.shape == (n,)
    assert bool(((t >= a) & (t <= b)).all())
    assert bool(torch.isfinite(w).all()) and bool((w > 0).all())

    grid, dens = _density_grid(s, p, a, b)
    mass = float(np.trapezoid(dens, grid))
    m_lo, m_hi = _lognormal_clamped_mass(s, p) if kind == "lognormal" else (0.0, 0.0)
    assert mass + m_lo + m_hi == pytest.approx(1.0, abs=2e-4)

    # the draws clamped to the ends have the clamped probability
    for at, m in ((a, m_lo), (b, m_hi)):
        count = int((t == at).sum())
        assert abs(count - n * m) <= 5.0 * math.sqrt(n * m * (1 - m)) + 2.0, (at, count, n * m)

    # the interior draws follow the stated density (KS against its integrated CDF)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(grid))])
    cdf /= cdf[-1]
    inner = t[(t > a) & (t < b)].numpy()
    res = stats.kstest(inner, lambda x: np.interp(x, grid, cdf))
    assert res.pvalue > 1e-3, res


@pytest.mark.parametrize("name", SAMPLER_PROCESSES + ["subvp"])
def test_time_densities_are_the_change_of_variables(name: str) -> None:
    """log_density against densities built here from sigma~(t) and log-SNR(t) by finite differences."""
    p = udm.get_process(name)
    t = _times(p, 9)
    h = 1e-6 * (p.t_max - p.t_eps)
    dlog_st = (torch.log(p.sigma_tilde(t + h)) - torch.log(p.sigma_tilde(t - h))) / (2 * h)
    s = LogNormalTime(p_mean=-0.4, p_std=1.7)
    z = (torch.log(p.sigma_tilde(t)) + 0.4) / 1.7
    expected = torch.exp(-0.5 * z**2) / (1.7 * math.sqrt(2 * math.pi)) * dlog_st.abs()
    _rel_close(torch.exp(s.log_density(p, t)), expected, 1e-5)

    if name != "rectified_flow":
        lo, hi = float(p.log_snr(p.t_max)), float(p.log_snr(p.t_eps))
        dlam = (p.log_snr(t + h) - p.log_snr(t - h)) / (2 * h)
        _rel_close(torch.exp(LogSNRTime().log_density(p, t)), dlam.abs() / (hi - lo), 1e-5)
    s = LogSNRTime(min_log_snr=-3.0, max_log_snr=2.5)
    dlam = (p.log_snr(t + h) - p.log_snr(t - h)) / (2 * h)
    _rel_close(torch.exp(s.log_density(p, t)), dlam.abs() / 5.5, 1e-5)
    # importance weights are the uniform density over the sampling density
    _, w = LogSNRTime(min_log_snr=-3.0, max_log_snr=2.5, importance=True)(p, 200, torch.Generator().manual_seed(11))
    tw, _ = s(p, 200, torch.Generator().manual_seed(11))
    _rel_close(w, 1.0 / ((p.t_max - p.t_eps) * torch.exp(s.log_density(p, tw))), 1e-12)


def test_logsnr_sampler_with_a_given_range_draws_inside_it() -> None:
    p = udm.get_process("vp")
    s = LogSNRTime(min_log_snr=-3.0, max_log_snr=2.5)
    t, _ = s(p, 2000, torch.Generator().manual_seed(12))
    lam = p.log_snr(t)
    assert float(lam.min()) >= -3.0 - 1e-9 and float(lam.max()) <= 2.5 + 1e-9
    # uniform in log-SNR
    res = stats.kstest(lam.numpy(), stats.uniform(loc=-3.0, scale=5.5).cdf)
    assert res.pvalue > 1e-3, res


def test_uniform_discrete_ddpm_draws_each_step_equally() -> None:
    p = udm.get_process("ddpm")
    n = 40_000
    t, w = UniformTime(discrete=True)(p, n, torch.Generator().manual_seed(13))
    assert torch.equal(t, torch.round(t)) and torch.equal(w, torch.ones_like(t))
    assert float(t.min()) >= 1 and float(t.max()) <= 1000
    counts = torch.bincount(t.long(), minlength=1001)[1:].numpy()
    assert counts.min() > 0
    assert stats.chisquare(counts).pvalue > 1e-3
    # both ends are reachable with the right frequency (no off-by-one at t = 1 or t = N)
    for end in (1, 1000):
        assert abs(int((t == end).sum()) - n / 1000) < 5 * math.sqrt(n / 1000)
    with pytest.raises(ValueError, match="integer"):
        UniformTime(discrete=True)(udm.get_process("vp_cosine"), 4)  # t in [0.001, 0.9946]: no integer


def _bump(lo: float, hi: float):
    def f(t):
        inside = (t > lo) & (t < hi)
        u = np.clip((np.asarray(t) - lo) / (hi - lo), 0.0, 1.0)
        return np.where(inside, np.sin(math.pi * u) ** 2, 0.0)

    return f


IMPORTANCE_CASES = [
    # (process, sampler, f): f vanishes where the lognormal law clamps or has no mass
    ("vp", LogSNRTime(importance=True), lambda t: np.cos(3 * t) + t**2),
    ("ddpm", LogSNRTime(importance=True), lambda t: np.sqrt(t / 1000.0)),
    ("edm", LogSNRTime(importance=True), lambda t: np.sqrt(t / 80.0)),
    ("vp", LogNormalTime(importance=True), _bump(0.05, 0.5)),
    ("edm", LogNormalTime(p_mean=0.0, p_std=1.5, importance=True), _bump(0.05, 8.0)),
    ("rectified_flow", LogNormalTime(p_mean=0.0, p_std=1.0, importance=True), _bump(0.02, 0.9)),
    ("vp", TIME_SAMPLERS.get("loguniform")(importance=True), lambda t: np.cos(3 * t) + t**2),
]


@pytest.mark.parametrize("case", range(len(IMPORTANCE_CASES)))
def test_importance_weights_estimate_the_uniform_mean(case: int) -> None:
    name, s, f = IMPORTANCE_CASES[case]
    p = udm.get_process(name)
    n = 20_000
    t, w = s(p, n, torch.Generator().manual_seed(14 + case))
    vals = w.numpy() * f(t.numpy())
    est, se = vals.mean(), vals.std(ddof=1) / math.sqrt(n)
    truth = integrate.quad(f, p.t_eps, p.t_max, limit=200, points=None)[0] / (p.t_max - p.t_eps)
    assert abs(est - truth) < 4.0 * se, (est, truth, se)
    # the unweighted mean is far from it: the weights matter
    plain = f(t.numpy())
    assert abs(plain.mean() - truth) > 10.0 * plain.std(ddof=1) / math.sqrt(n)


def test_samplers_without_importance_have_unit_weights() -> None:
    p = udm.get_process("vp")
    for s in (UniformTime(), LogNormalTime(), LogSNRTime()):
        _, w = s(p, 100, torch.Generator().manual_seed(15))
        assert torch.equal(w, torch.ones(100, dtype=torch.float64))
    _, w = UniformTime(importance=True)(p, 100, torch.Generator().manual_seed(15))
    _rel_close(w, torch.ones(100, dtype=torch.float64), 1e-12)


# ----------------------------------------------------------------------------- adaptive


K, H, MIX = 8, 4, 0.2


def _centers(p) -> torch.Tensor:
    return p.t_eps + (torch.arange(K, dtype=torch.float64) + 0.5) / K * (p.t_max - p.t_eps)


def _cells(p, t: torch.Tensor) -> torch.Tensor:
    return torch.floor((t - p.t_eps) / (p.t_max - p.t_eps) * K).long().clamp(0, K - 1)


def _trained(p) -> tuple[AdaptiveTime, torch.Tensor]:
    """An adaptive sampler whose cells hold known histories; returns it and the expected p_k."""
    s = AdaptiveTime(bins=K, history=H, uniform_mix=MIX)
    c = _centers(p)
    hist = {k: [1.0 + k, 2.0 + k, 0.5 * (1 + k), 3.0 + 2 * k] for k in range(K)}
    hist[7] = [100.0, 5.0, 1.0, 2.0, 30.0]  # one more than ``history``: the 100 is dropped
    for k, losses in hist.items():
        for v in losses:
            s.observe(p, c[k : k + 1], torch.tensor([v], dtype=torch.float32))
    r = torch.tensor([math.sqrt(sum(v * v for v in hist[k][-H:]) / H) for k in range(K)], dtype=torch.float64)
    return s, (1 - MIX) * r / r.sum() + MIX / K


def test_adaptive_is_uniform_until_every_cell_is_full() -> None:
    p = udm.get_process("vp")
    s = AdaptiveTime(bins=K, history=H, uniform_mix=MIX)
    c = _centers(p)
    # all cells full but one, which has history - 1 losses; wildly different losses
    s.observe(p, c.repeat(H - 1), torch.arange(K * (H - 1), dtype=torch.float64) ** 3)
    s.observe(p, c[:-1], torch.full((K - 1,), 50.0))
    assert torch.equal(s.probabilities(), torch.full((K,), 1.0 / K, dtype=torch.float64))
    t, w = s(p, 500, torch.Generator().manual_seed(16))
    assert torch.equal(w, torch.ones_like(w))
    assert bool(((t >= p.t_eps) & (t <= p.t_max)).all())
    # the last loss makes it adaptive
    s.observe(p, c[-1:], torch.tensor([50.0]))
    assert not torch.allclose(s.probabilities(), torch.full((K,), 1.0 / K, dtype=torch.float64))


def test_adaptive_probabilities_weights_and_law() -> None:
    p = udm.get_process("vp")
    s, expected = _trained(p)
    _rel_close(s.probabilities(), expected, 1e-12)
    assert float(s.probabilities().sum()) == pytest.approx(1.0, abs=1e-12)
    n = 20_000
    t, w = s(p, n, torch.Generator().manual_seed(17))
    cells = _cells(p, t)
    _rel_close(w, 1.0 / (K * expected[cells]), 1e-12)
    counts = torch.bincount(cells, minlength=K).numpy()
    assert stats.chisquare(counts, n * expected.numpy()).pvalue > 1e-3
    # t is uniform inside its cell
    u = ((t - p.t_eps) / (p.t_max - p.t_eps) * K - cells).numpy()
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    # log_density is the piecewise-constant law and integrates to 1
    dens = torch.exp(s.log_density(p, _centers(p)))
    _rel_close(dens, expected * K / (p.t_max - p.t_eps), 1e-12)
    assert float((dens * (p.t_max - p.t_eps) / K).sum()) == pytest.approx(1.0, abs=1e-12)


def test_adaptive_weighted_estimate_is_unbiased() -> None:
    p = udm.get_process("vp")
    s, _ = _trained(p)
    n = 20_000
    t, w = s(p, n, torch.Generator().manual_seed(18))

    def f(x):
        return np.sin(4.0 * x) + x

    truth = integrate.quad(f, p.t_eps, p.t_max)[0] / (p.t_max - p.t_eps)
    vals = w.numpy() * f(t.numpy())
    se = vals.std(ddof=1) / math.sqrt(n)
    assert abs(vals.mean() - truth) < 4.0 * se
    plain = f(t.numpy())
    assert abs(plain.mean() - truth) > 10.0 * plain.std(ddof=1) / math.sqrt(n)


def test_adaptive_state_round_trip() -> None:
    p = udm.get_process("ddpm")
    s, _ = _trained(p)
    state = s.state_dict()
    fresh = AdaptiveTime(bins=K, history=H, uniform_mix=MIX)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.losses, s.losses) and torch.equal(fresh.counts, s.counts)
    assert torch.equal(fresh.probabilities(), s.probabilities())
    a = s(p, 300, torch.Generator().manual_seed(19))
    b = fresh(p, 300, torch.Generator().manual_seed(19))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # the state is a copy: later observations do not change a saved checkpoint
    saved = {k: v.clone() for k, v in state.items()}
    s.observe(p, _centers(p), torch.full((K,), 1e3))
    assert all(torch.equal(state[k], saved[k]) for k in saved)
    assert not torch.equal(s.probabilities(), fresh.probabilities())
    # DenoisingLoss checkpoints its sampler's state
    loss = DenoisingLoss(time_sampler=fresh)
    other = DenoisingLoss(time_sampler={"name": "adaptive", "bins": K, "history": H, "uniform_mix": MIX})
    other.load_state_dict(loss.state_dict())
    assert torch.equal(other.time_sampler.probabilities(), fresh.probabilities())
    assert loss.config()["time_sampler"] == {"name": "adaptive", "bins": K, "history": H, "uniform_mix": MIX}
    assert UniformTime().state_dict() == {} and LogNormalTime().state_dict() == {}


def test_adaptive_learns_from_the_loss_objective() -> None:
    """Feeding LossOutput.objective back concentrates draws where the x0-weighted loss is large."""
    p = udm.get_process("vp")
    s = AdaptiveTime(bins=K, history=H, uniform_mix=MIX)
    loss = DenoisingLoss("eps", time_sampler=s)
    den = udm.Denoiser(TinyNet(seed=20), p, "x0")
    g = torch.Generator().manual_seed(20)
    for _ in range(12):
        x0 = GMM.sample(64, g)
        out = loss(den, x0, generator=g)
        s.observe(p, out.t, out.objective)
    assert int(s.counts.min()) == H
    pk = s.probabilities()
    # the eps-weighted error of an x0 network is largest at small t (SNR weighting)
    assert int(torch.argmax(pk)) == 0 and float(pk[0]) > 2.0 / K


# ----------------------------------------------------------------------------- errors


class ToyProcess(Process):
    """A non-Gaussian process: no alpha/sigma."""

    name = "toy"

    def corrupt(self, x0, t, eps):
        return x0 + torch.as_tensor(t, dtype=x0.dtype).reshape(-1, *([1] * (x0.ndim - 1))) * eps.sign()

    def prior(self, shape, generator=None, *, dtype=torch.float32, device=None):
        return torch.zeros(shape, dtype=dtype, device=device)


def test_unknown_weighting_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown loss weighting 'snr'") as info:
        DenoisingLoss("snr")
    for w in WEIGHTINGS:
        assert w in str(info.value)


def test_time_sampler_errors() -> None:
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="p_std must be > 0"):
            LogNormalTime(p_std=bad)
    with pytest.raises(ValueError, match="p_std"):
        get_time_sampler({"name": "lognormal", "p_std": 0})
    for attempt in (lambda: TIME_SAMPLERS.get("beta"), lambda: get_time_sampler("beta"), lambda: DenoisingLoss(time_sampler="beta")):
        with pytest.raises(ValueError, match="unknown time sampler 'beta'") as info:
            attempt()
        for name in ("adaptive", "lognormal", "logsnr", "uniform"):
            assert name in str(info.value)
    assert sorted(TIME_SAMPLERS.names()) == ["adaptive", "lognormal", "logsnr", "loguniform", "uniform"]
    with pytest.raises(ValueError, match="empty log-SNR range"):
        LogSNRTime(min_log_snr=2.0, max_log_snr=1.0)(udm.get_process("vp"), 4)
    for kwargs in ({"bins": 0}, {"history": 0}, {"uniform_mix": 0.0}, {"uniform_mix": 1.5}):
        with pytest.raises(ValueError, match="adaptive time sampler"):
            AdaptiveTime(**kwargs)
    assert isinstance(get_time_sampler(None), UniformTime)
    s = LogSNRTime()
    assert get_time_sampler(s) is s


def test_logsnr_sampler_on_an_infinite_log_snr_range_raises() -> None:
    """Rectified flow has log-SNR(t_max = 1) = -inf: the default range must not silently give NaN times."""
    p = udm.get_process("rectified_flow")
    with pytest.raises(ValueError, match="min_log_snr"):
        LogSNRTime()(p, 4)
    t, _ = LogSNRTime(min_log_snr=-8.0)(p, 100, torch.Generator().manual_seed(21))
    assert bool(torch.isfinite(t).all())


def test_non_gaussian_process_errors_name_the_process() -> None:
    p = ToyProcess()
    for s in (LogNormalTime(), LogSNRTime()):
        with pytest.raises(ValueError, match="linear process.*'toy'"):
            s(p, 4)
        with pytest.raises(ValueError, match="'toy'"):
            s.log_density(p, torch.full((4,), 0.5, dtype=torch.float64))
    assert re.search("lognormal", _raised(lambda: LogNormalTime()(p, 4)))
    den = udm.Denoiser(TinyNet(seed=22), p, "x0")
    x0, eps = _batch(seed=22)
    t = torch.full((16,), 0.5, dtype=torch.float64)
    for weighting in ("min_snr", "likelihood"):
        with pytest.raises(ValueError, match=f"{weighting} weighting needs a linear process.*'toy'"):
            DenoisingLoss(weighting)(den, x0, t=t, eps=eps)
    # the x0 loss with uniform times needs nothing Gaussian
    out = DenoisingLoss("target")(den, x0, generator=torch.Generator().manual_seed(22))
    assert bool(torch.isfinite(out.loss))


def _raised(fn) -> str:
    try:
        fn()
    except ValueError as e:
        return str(e)
    raise AssertionError("no ValueError")
