"""Exact references (THEORY §10.1-10.2, §2.3) and process-level identities of the Gaussian family.

Every closed form of :class:`udm.theory.GaussianMixture` is checked against an
independent computation: autograd of a log-density built here from
``torch.distributions.MultivariateNormal``, brute-force Bayes by grid
quadrature, or Monte Carlo. The process checks (DDPM tables, log-SNR
inverses, SDE coefficients, the posterior q(x_s | x_t, x0)) use finite
differences, numerical integration and explicit Gaussian conditioning.
All arithmetic is float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.integrate
import torch
from torch.distributions import MultivariateNormal

import udm
from udm.theory import GaussianMixture, PointMasses

PROCESS_NAMES = ["ddpm", "vp", "vp_cosine", "subvp", "ve", "edm", "rectified_flow"]
# Fractions of t_max, chosen so that DDPM times are never integers (its schedule is
# piecewise log-linear between integers, so finite differences must not straddle one).
FRACS = [0.0537, 0.3141, 0.7071]
TOL = dict(rtol=1e-10, atol=1e-10)

WEIGHTS = [0.2, 0.5, 0.3]
MEANS = [[-1.5, 0.5], [1.0, -1.0], [0.3, 2.0]]
COVS = [
    [[0.30, 0.12], [0.12, 0.20]],
    [[0.05, -0.02], [-0.02, 0.40]],
    [[0.25, 0.00], [0.00, 0.10]],
]


def _gmm() -> GaussianMixture:
    return GaussianMixture(WEIGHTS, MEANS, COVS)


def _process(name: str) -> udm.GaussianProcess:
    return udm.get_process(name)


def _points(n: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, 2, generator=g, dtype=torch.float64) + torch.tensor([0.0, 0.3], dtype=torch.float64)


def _ab(process, t: torch.Tensor | float, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha_t, sigma_t as (n,) tensors."""
    tt = torch.as_tensor(t, dtype=torch.float64).expand(n)
    return process.alpha(tt), process.sigma(tt)


def _component_log_pdf(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log pi_k + log N(x; a m_k, a^2 S_k + b^2 I), (n, K), built independently of udm.theory."""
    m = torch.tensor(MEANS, dtype=torch.float64)
    s = torch.tensor(COVS, dtype=torch.float64)
    w = torch.tensor(WEIGHTS, dtype=torch.float64)
    loc = a[:, None, None] * m[None]
    cov = a[:, None, None, None] ** 2 * s[None] + b[:, None, None, None] ** 2 * torch.eye(2, dtype=torch.float64)
    return torch.log(w / w.sum())[None] + MultivariateNormal(loc, covariance_matrix=cov).log_prob(x[:, None, :])


def _ref_log_prob(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(_component_log_pdf(x, a, b), -1)


def _grad(fn, x: torch.Tensor) -> torch.Tensor:
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(xg).sum(), xg)
    return g


def _time_cases(process, n: int):
    """Scalar times at FRACS and one per-sample time tensor spanning the interior."""
    cases = [f * process.t_max for f in FRACS]
    cases.append(torch.linspace(0.03, 0.9, n, dtype=torch.float64) * process.t_max)
    return cases


# ----------------------------------------------------------------------------- GMM closed forms


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_gmm_log_prob_and_score_match_autograd(name: str) -> None:
    gmm, p, x = _gmm(), _process(name), _points(12, 0)
    for t in _time_cases(p, x.shape[0]):
        a, b = _ab(p, t, x.shape[0])
        torch.testing.assert_close(gmm.log_prob(x, t, p), _ref_log_prob(x, a, b), **TOL)
        torch.testing.assert_close(gmm.log_prob_components(x, t, p), _component_log_pdf(x, a, b), **TOL)
        score = gmm.score(x, t, p)
        torch.testing.assert_close(score, _grad(lambda z: _ref_log_prob(z, a, b), x), **TOL)
        # the mixture's own log_prob is differentiable and consistent too
        torch.testing.assert_close(score, _grad(lambda z: gmm.log_prob(z, t, p), x), **TOL)
    # the clean density (no process): t = 0, alpha = 1, sigma = 0
    one, zero = torch.ones(x.shape[0], dtype=torch.float64), torch.zeros(x.shape[0], dtype=torch.float64)
    torch.testing.assert_close(gmm.log_prob(x), _ref_log_prob(x, one, zero), **TOL)
    torch.testing.assert_close(gmm.log_prob(x, 0.0, p), _ref_log_prob(x, one, zero), **TOL)


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_gmm_eps_and_tweedie(name: str) -> None:
    gmm, p, x = _gmm(), _process(name), _points(12, 1)
    for t in _time_cases(p, x.shape[0]):
        a, b = (v[:, None] for v in _ab(p, t, x.shape[0]))
        score = _grad(lambda z: _ref_log_prob(z, a[:, 0], b[:, 0]), x)
        torch.testing.assert_close(gmm.eps(x, t, p), -b * score, **TOL)
        torch.testing.assert_close(gmm.predict(x, t, p, "eps"), -b * score, **TOL)
        torch.testing.assert_close(gmm.predict(x, t, p, "score"), score, **TOL)
        # Tweedie: E[x0 | x_t] = (x + sigma^2 grad log p_t) / alpha
        tweedie = (x + b**2 * score) / a
        torch.testing.assert_close(gmm.posterior_mean(x, t, p), tweedie, **TOL)
        torch.testing.assert_close(gmm.predict(x, t, p, "x0"), tweedie, **TOL)
        # and the mixture posterior's weighted means agree with it
        w, means, _ = gmm.posterior(x, t, p)
        torch.testing.assert_close((w[..., None] * means).sum(1), tweedie, **TOL)


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_class_probs_autograd_identity(name: str) -> None:
    """THEORY §2.3 test 1: grad log p_t(y=k | x) + grad log p_t(x) = grad log p_t(x | y=k)."""
    gmm, p, x = _gmm(), _process(name), _points(10, 2)
    for t in _time_cases(p, x.shape[0]):
        a, b = _ab(p, t, x.shape[0])
        probs = gmm.class_probs(x, t, p)
        torch.testing.assert_close(probs, torch.softmax(_component_log_pdf(x, a, b), -1), **TOL)
        torch.testing.assert_close(probs.sum(-1), torch.ones(x.shape[0], dtype=torch.float64), **TOL)
        score = gmm.score(x, t, p)
        for k in range(len(WEIGHTS)):
            grad_log_y = _grad(lambda z: torch.log(gmm.class_probs(z, t, p)[:, k]), x)
            cond = gmm.score(x, t, p, y=k)
            torch.testing.assert_close(grad_log_y + score, cond, **TOL)
            # the conditional score is the gradient of component k's own log-density
            ref = _grad(lambda z: _component_log_pdf(z, a, b)[:, k], x)
            torch.testing.assert_close(cond, ref, **TOL)
            # conditional eps and x0 obey the same identities as the unconditional ones
            torch.testing.assert_close(gmm.eps(x, t, p, y=k), -b[:, None] * cond, **TOL)
            torch.testing.assert_close(gmm.posterior_mean(x, t, p, y=k), (x + b[:, None] ** 2 * cond) / a[:, None], **TOL)
        # per-sample labels
        y = torch.arange(x.shape[0]) % len(WEIGHTS)
        per = torch.stack([gmm.score(x[i : i + 1], t if not torch.is_tensor(t) else t[i : i + 1], p, y=int(y[i]))[0] for i in range(x.shape[0])])
        torch.testing.assert_close(gmm.score(x, t, p, y=y), per, **TOL)


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_velocity_is_pf_ode_drift(name: str) -> None:
    """velocity* = alpha' x0* + sigma' eps* = f x - g^2/2 score (the PF-ODE drift of process.sde)."""
    gmm, p, x = _gmm(), _process(name), _points(12, 3)
    for frac in FRACS:
        t = frac * p.t_max
        vel = gmm.predict(x, t, p, "velocity")
        x0, eps, score = gmm.posterior_mean(x, t, p), gmm.eps(x, t, p), gmm.score(x, t, p)
        torch.testing.assert_close(vel, p.dalpha(t) * x0 + p.dsigma(t) * eps, **TOL)
        f, g2 = p.sde(t)
        torch.testing.assert_close(vel, f * x - 0.5 * g2 * score, **TOL)
        # with alpha', sigma' from central finite differences of alpha, sigma (checks dalpha/dsigma)
        h = 1e-5 * p.t_max
        da = (p.alpha(t + h) - p.alpha(t - h)) / (2 * h)
        ds = (p.sigma(t + h) - p.sigma(t - h)) / (2 * h)
        torch.testing.assert_close(vel, da * x0 + ds * eps, rtol=1e-6, atol=1e-6)
    # per-sample times
    t = torch.linspace(0.05, 0.85, x.shape[0], dtype=torch.float64) * p.t_max
    f, g2 = p.sde(t)
    torch.testing.assert_close(gmm.predict(x, t, p, "velocity"), f[:, None] * x - 0.5 * g2[:, None] * gmm.score(x, t, p), **TOL)


def _grid_posterior_moments(x_t: np.ndarray, a: float, b: float, lim: float = 7.0, n: int = 1401):
    """Brute-force Bayes on a 2-D grid: posterior class probabilities, mean and covariance of x0 | x_t."""
    u = np.linspace(-lim, lim, n)
    du = u[1] - u[0]
    X, Y = np.meshgrid(u, u, indexing="ij")
    pts = np.stack([X.ravel(), Y.ravel()], -1)
    comps = []
    for w, m, s in zip(WEIGHTS, MEANS, COVS):
        s = np.asarray(s)
        d = pts - np.asarray(m)
        q = np.einsum("ni,ij,nj->n", d, np.linalg.inv(s), d)
        comps.append(w * np.exp(-0.5 * q) / (2 * math.pi * math.sqrt(np.linalg.det(s))))
    comps = np.stack(comps)  # (K, N) prior density of each component
    lik = np.exp(-0.5 * ((x_t[None] - a * pts) ** 2).sum(-1) / b**2)  # N(x_t; a x0, b^2 I) up to a constant
    joint = comps * lik[None] * du * du
    z = joint.sum()
    probs = joint.sum(1) / z
    post = joint.sum(0) / z
    mean = post @ pts
    c = pts - mean
    cov = (post[:, None] * c).T @ c
    return probs, mean, cov


@pytest.mark.parametrize("name", ["vp", "ve", "rectified_flow"])
def test_gmm_posterior_matches_grid_quadrature(name: str) -> None:
    gmm, p = _gmm(), _process(name)
    x = torch.tensor([[0.4, -0.3], [-1.0, 1.2]], dtype=torch.float64)
    for frac in (0.2, 0.5):
        t = frac * p.t_max
        a, b = float(p.alpha(t)), float(p.sigma(t))
        w, means, covs = gmm.posterior(x, t, p)
        for i in range(x.shape[0]):
            probs, mean, cov = _grid_posterior_moments(x[i].numpy(), a, b)
            np.testing.assert_allclose(w[i].numpy(), probs, rtol=1e-8, atol=1e-10)
            mix_mean = (w[i, :, None] * means[i]).sum(0)
            second = (w[i, :, None, None] * (covs[min(i, covs.shape[0] - 1)] + means[i, :, :, None] * means[i, :, None, :])).sum(0)
            mix_cov = second - mix_mean[:, None] * mix_mean[None, :]
            np.testing.assert_allclose(mix_mean.numpy(), mean, rtol=1e-8, atol=1e-9)
            np.testing.assert_allclose(mix_cov.numpy(), cov, rtol=1e-7, atol=1e-9)


def test_gmm_posterior_component_covariance_formula() -> None:
    """Each posterior component is exactly Gaussian conditioning of (x0, x_t) | y = k."""
    gmm, p = _gmm(), _process("vp")
    x = _points(5, 4)
    t = 0.4
    a, b = float(p.alpha(t)), float(p.sigma(t))
    w, means, covs = gmm.posterior(x, t, p)
    for k, (m, s) in enumerate(zip(MEANS, COVS)):
        m, s = torch.tensor(m, dtype=torch.float64), torch.tensor(s, dtype=torch.float64)
        c = a * a * s + b * b * torch.eye(2, dtype=torch.float64)
        gain = a * s @ torch.linalg.inv(c)
        torch.testing.assert_close(covs[:, k], (s - gain @ (a * s)).expand(covs.shape[0], 2, 2), **TOL)
        torch.testing.assert_close(means[:, k], m + (x - a * m) @ gain.T, **TOL)


def test_gmm_posterior_sample_moments() -> None:
    gmm, p = _gmm(), _process("vp")
    n = 200_000
    x1 = torch.tensor([[0.2, 0.1]], dtype=torch.float64)
    t = 0.45
    # per-sample time tensor (the form the Denoiser passes); the scalar-t form is tested separately
    draws = gmm.posterior_sample(x1.expand(n, 2), torch.full((n,), t, dtype=torch.float64), p, generator=7)
    w, means, covs = gmm.posterior(x1, t, p)
    mean = (w[0, :, None] * means[0]).sum(0)
    cov = (w[0, :, None, None] * (covs[0] + means[0, :, :, None] * means[0, :, None, :])).sum(0) - mean[:, None] * mean[None]
    se = (torch.diagonal(cov) / n).sqrt()
    assert ((draws.mean(0) - mean).abs() < 5 * se).all()
    emp = torch.cov(draws.T)
    # standard error of a sample covariance entry ~ sqrt((C_ii C_jj + C_ij^2) / n)
    se_cov = ((torch.diagonal(cov)[:, None] * torch.diagonal(cov)[None] + cov**2) / n).sqrt()
    assert ((emp - cov).abs() < 6 * se_cov).all()
    # per-sample times: row i must use its own t (a large and a small t give very different spreads)
    tv = torch.tensor([0.05, 0.95], dtype=torch.float64).repeat_interleave(50_000)
    d2 = gmm.posterior_sample(x1.expand(tv.shape[0], 2), tv, p, generator=8)
    for i, tt in enumerate((0.05, 0.95)):
        w, means, covs = gmm.posterior(x1, tt, p)
        m = (w[0, :, None] * means[0]).sum(0)
        second = (w[0, :, None, None] * (covs[0] + means[0, :, :, None] * means[0, :, None, :])).sum(0)
        var = torch.diagonal(second) - m**2
        part = d2[i * 50_000 : (i + 1) * 50_000]
        assert ((part.mean(0) - m).abs() < 5 * (var / 50_000).sqrt()).all()
        assert ((part.var(0) - var).abs() < 0.05 * var).all()


def test_gmm_posterior_sample_scalar_time() -> None:
    """A scalar t works for a batch of several x and gives the same draws as the equivalent per-sample t."""
    gmm, p = _gmm(), _process("vp")
    x = _points(6, 9)
    t = 0.45
    ref = gmm.posterior_sample(x, torch.full((6,), t, dtype=torch.float64), p, generator=3)
    out = gmm.posterior_sample(x, t, p, generator=3)
    torch.testing.assert_close(out, ref, rtol=1e-13, atol=1e-13)


def test_gmm_sample_moments() -> None:
    gmm = _gmm()
    n = 200_000
    x, y = gmm.sample(n, generator=11, return_labels=True)
    w = torch.tensor(WEIGHTS, dtype=torch.float64)
    m = torch.tensor(MEANS, dtype=torch.float64)
    s = torch.tensor(COVS, dtype=torch.float64)
    mean = w @ m
    cov = (w[:, None, None] * (s + m[:, :, None] * m[:, None, :])).sum(0) - mean[:, None] * mean[None]
    se = (torch.diagonal(cov) / n).sqrt()
    assert ((x.mean(0) - mean).abs() < 5 * se).all()
    assert (torch.cov(x.T) - cov).abs().max() < 0.02
    freq = torch.bincount(y, minlength=3).double() / n
    assert ((freq - w).abs() < 5 * (w * (1 - w) / n).sqrt()).all()
    for k in range(3):
        xk = x[y == k]
        assert (xk.mean(0) - m[k]).abs().max() < 0.01
        assert (torch.cov(xk.T) - s[k]).abs().max() < 0.01
    # same seed, same draws
    torch.testing.assert_close(gmm.sample(n, generator=11), x, rtol=0, atol=0)


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_point_masses_match_zero_covariance_mixture(name: str) -> None:
    pts = torch.tensor([[-1.0, 0.0], [0.5, 1.5], [2.0, -0.5], [0.0, 0.2]], dtype=torch.float64)
    w = [0.1, 0.4, 0.3, 0.2]
    pm = PointMasses(pts, w)
    gmm = GaussianMixture(w, pts, torch.zeros(4))
    p, x = _process(name), _points(9, 5, scale=1.5)
    for t in _time_cases(p, x.shape[0]):
        torch.testing.assert_close(pm.log_prob(x, t, p), gmm.log_prob(x, t, p), **TOL)
        torch.testing.assert_close(pm.posterior_mean(x, t, p), gmm.posterior_mean(x, t, p), **TOL)
        torch.testing.assert_close(pm.posterior_weights(x, t, p), gmm.class_probs(x, t, p), **TOL)
        torch.testing.assert_close(pm.score(x, t, p), gmm.score(x, t, p), **TOL)
        # brute force: log p_t(x) = log sum_j w_j N(x; a x_j, sigma^2 I)
        a, b = _ab(p, t, x.shape[0])
        d2 = ((x[:, None, :] - a[:, None, None] * pts[None]) ** 2).sum(-1)
        ref = torch.logsumexp(torch.log(torch.tensor(w, dtype=torch.float64))[None] - 0.5 * d2 / b[:, None] ** 2, -1) - 2 * torch.log(b) - math.log(2 * math.pi)
        torch.testing.assert_close(pm.log_prob(x, t, p), ref, **TOL)


# ----------------------------------------------------------------------------- processes


@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "cosine"])
def test_ddpm_alphas_cumprod_product_formula(kind: str) -> None:
    n = 1000
    p = udm.get_process("ddpm", beta_schedule=kind, num_train_steps=n)
    if kind == "linear":
        betas = np.linspace(1e-4, 0.02, n)
    elif kind == "scaled_linear":
        betas = np.linspace(1e-4**0.5, 0.02**0.5, n) ** 2
    else:
        f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        betas = np.array([min(1 - f(k / n) / f((k - 1) / n), 0.999) for k in range(1, n + 1)])
    prod, ac = 1.0, []
    for beta in betas:
        prod *= 1.0 - beta
        ac.append(prod)
    ac = np.array(ac)
    np.testing.assert_allclose(p.schedule.alphas_cumprod.numpy(), ac, rtol=1e-12)
    # alpha_t^2 = alphas_cumprod[t - 1] on the integer grid, and t = 0 is clean data
    t = torch.arange(0, n + 1, dtype=torch.float64)
    np.testing.assert_allclose((p.alpha(t) ** 2).numpy(), np.concatenate([[1.0], ac]), rtol=1e-12)
    np.testing.assert_allclose((p.sigma(t) ** 2).numpy(), np.concatenate([[0.0], 1.0 - ac]), rtol=1e-10, atol=1e-15)
    # log(alpha^2) is linear between integers
    half = torch.arange(0, n, dtype=torch.float64) + 0.5
    lab = np.log(np.concatenate([[1.0], ac]))
    np.testing.assert_allclose((2 * torch.log(p.alpha(half))).numpy(), 0.5 * (lab[:-1] + lab[1:]), rtol=1e-12, atol=1e-15)
    if kind == "cosine":
        # Nichol & Dhariwal: alphas_cumprod[k-1] = f(k/N) / f(0) where no beta was clipped
        ref = np.array([f(k / n) / f(0) for k in range(1, n + 1)])
        clipped = np.argmax(betas >= 0.999) if (betas >= 0.999).any() else n
        np.testing.assert_allclose(ac[:clipped], ref[:clipped], rtol=1e-10)


def test_ddpm_custom_alphas_cumprod_round_trips() -> None:
    ref = udm.get_process("ddpm")
    p = udm.get_process("ddpm", alphas_cumprod=ref.schedule.alphas_cumprod.numpy())
    t = torch.tensor([0.0, 1.0, 17.3, 500.0, 999.9, 1000.0], dtype=torch.float64)
    torch.testing.assert_close(p.alpha(t), ref.alpha(t), rtol=1e-14, atol=0)
    torch.testing.assert_close(p.schedule.betas, ref.schedule.betas, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_log_snr_round_trip(name: str) -> None:
    p = _process(name)
    t = torch.linspace(0.01, 0.98, 97, dtype=torch.float64) * p.t_max
    lam = p.log_snr(t)
    # log-SNR is log(alpha^2 / sigma^2) and strictly decreasing
    torch.testing.assert_close(lam, torch.log(p.alpha(t) ** 2 / p.sigma(t) ** 2), rtol=1e-10, atol=1e-10)
    assert (lam[1:] < lam[:-1]).all()
    torch.testing.assert_close(p.t_from_log_snr(lam), t, rtol=1e-9, atol=1e-9 * p.t_max)
    # and the other way round, on a log-SNR grid inside the range
    grid = torch.linspace(float(lam[-1]), float(lam[0]), 41, dtype=torch.float64)
    torch.testing.assert_close(p.log_snr(p.t_from_log_snr(grid)), grid, rtol=1e-9, atol=1e-9)
    # sigma_tilde = sigma / alpha and its inverse
    st = p.sigma_tilde(t)
    torch.testing.assert_close(p.t_from_sigma_tilde(st), t, rtol=1e-9, atol=1e-9 * p.t_max)


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_sde_coefficients_by_finite_differences(name: str) -> None:
    """d(sigma^2)/dt = 2 f sigma^2 + g^2 and f = d log(alpha)/dt, with derivatives by central differences."""
    p = _process(name)
    t = (torch.tensor(FRACS + [0.1109, 0.5371, 0.9043], dtype=torch.float64)) * p.t_max
    h = 1e-5 * p.t_max
    f, g2 = p.sde(t)
    dvar = (p.sigma(t + h) ** 2 - p.sigma(t - h) ** 2) / (2 * h)
    dlog_alpha = (torch.log(p.alpha(t + h)) - torch.log(p.alpha(t - h))) / (2 * h)
    torch.testing.assert_close(2 * f * p.sigma(t) ** 2 + g2, dvar, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(f, dlog_alpha, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(p.dalpha(t), (p.alpha(t + h) - p.alpha(t - h)) / (2 * h), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(p.dsigma(t), (p.sigma(t + h) - p.sigma(t - h)) / (2 * h), rtol=1e-6, atol=1e-9)
    # g^2 = -sigma^2 d(log-SNR)/dt >= 0
    dlam = (p.log_snr(t + h) - p.log_snr(t - h)) / (2 * h)
    torch.testing.assert_close(g2, -p.sigma(t) ** 2 * dlam, rtol=1e-6, atol=1e-9)
    dense = torch.linspace(0.001, 0.999, 500, dtype=torch.float64) * p.t_max
    assert (p.sde(dense)[1] > 0).all()
    # boundary values: clean data at t = 0
    assert float(p.alpha(0.0)) == pytest.approx(1.0, abs=1e-12)
    assert float(p.sigma(0.0)) == pytest.approx(0.0, abs=1e-12)


def _integrated_drift(p, s: float, t: float) -> float:
    """int_s^t f(u) du by quadrature of process.sde (exact per-segment sum for DDPM's piecewise-constant f)."""
    if p.name == "ddpm":
        ks = np.arange(math.floor(s), math.ceil(t))
        lo, hi = np.maximum(ks, s), np.minimum(ks + 1, t)
        return float(sum(float(p.sde(float(k) + 0.5)[0]) * (b - a) for k, a, b in zip(ks, lo, hi)))
    val, _ = scipy.integrate.quad(lambda u: float(p.sde(u)[0]), s, t, epsabs=1e-13, epsrel=1e-12, limit=200)
    return val


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_posterior_matches_gaussian_conditioning(name: str) -> None:
    """q(x_s | x_t, x0) from the joint law of (x_s, x_t) | x0 of the forward SDE, conditioned by hand."""
    p = _process(name)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(4, 3, generator=g, dtype=torch.float64)
    x_t = torch.randn(4, 3, generator=g, dtype=torch.float64) * 2
    for fs, ft in [(0.1, 0.2), (0.3141, 0.7071), (0.0537, 0.93)]:
        s, t = fs * p.t_max, ft * p.t_max
        a_s, s_s, a_t, s_t = (float(v) for v in (p.alpha(s), p.sigma(s), p.alpha(t), p.sigma(t)))
        phi = math.exp(_integrated_drift(p, s, t))  # x_t = phi x_s + independent noise
        assert phi == pytest.approx(a_t / a_s, rel=1e-9)
        joint = np.array([[s_s**2, phi * s_s**2], [phi * s_s**2, s_t**2]])
        gain = joint[0, 1] / joint[1, 1]
        mean_ref = a_s * x0.numpy() + gain * (x_t.numpy() - a_t * x0.numpy())
        var_ref = joint[0, 0] - joint[0, 1] ** 2 / joint[1, 1]
        mean, var = p.posterior(x_t, x0, t, s)
        np.testing.assert_allclose(mean.numpy(), mean_ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(float(var), var_ref, rtol=1e-9, atol=1e-14)
        assert var_ref > 0
    # per-sample (t, s)
    t = torch.tensor([0.2, 0.5, 0.8, 0.95], dtype=torch.float64) * p.t_max
    s = torch.tensor([0.1, 0.45, 0.2, 0.01], dtype=torch.float64) * p.t_max
    mean, var = p.posterior(x_t, x0, t, s)
    for i in range(4):
        mi, vi = p.posterior(x_t[i : i + 1], x0[i : i + 1], float(t[i]), float(s[i]))
        torch.testing.assert_close(mean[i : i + 1], mi, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(var[i].reshape(()), vi.reshape(()), rtol=1e-13, atol=1e-15)


def test_posterior_monte_carlo() -> None:
    """Simulate the Markov chain x_s -> x_t given x0 and regress: mean and variance of x_s | x_t."""
    p = _process("vp")
    s, t = 0.3, 0.6
    n = 400_000
    g = torch.Generator().manual_seed(21)
    x0 = torch.tensor([0.7], dtype=torch.float64)
    a_s, s_s, a_t, s_t = (float(v) for v in (p.alpha(s), p.sigma(s), p.alpha(t), p.sigma(t)))
    phi = a_t / a_s
    xs = a_s * x0 + s_s * torch.randn(n, 1, generator=g, dtype=torch.float64)
    xt = phi * xs + math.sqrt(s_t**2 - phi**2 * s_s**2) * torch.randn(n, 1, generator=g, dtype=torch.float64)
    mean, var = p.posterior(xt, x0.expand(n, 1), t, s)
    resid = xs - mean
    assert abs(float(resid.mean())) < 5 * math.sqrt(float(var) / n)
    assert float(resid.var()) == pytest.approx(float(var), rel=5 * math.sqrt(2 / n))
    # residual uncorrelated with x_t (mean is the regression of x_s on x_t)
    assert abs(float(torch.corrcoef(torch.stack([resid[:, 0], xt[:, 0]]))[0, 1])) < 5 / math.sqrt(n)
