"""Stochastic samplers (udm.samplers.stochastic, euler_maruyama, churn): orders on closed forms, batch and step invariance.

Weak order is measured exactly, without Monte Carlo: for Gaussian data the
exact denoiser is affine in x_t, so every sampler's endpoint is an affine
function of x_T and of the Brownian values it queried, which are jointly
Gaussian. A first pass records where the sampler queries the path; a second
pass builds those values from independent normals xi (W = cumulative sums of
sqrt(dw) xi) and differentiates the endpoint with respect to x_T and xi, which
gives its mean and variance in closed form. Starting from the exact p_T, the
exact reverse SDE lands on p_{t_end} = N(alpha mu, alpha^2 s^2 + sigma^2); the
weak error is the variance error (the mean error of the exponential solvers is
zero to rounding on this problem).

Theory (additive noise, Gaussian data): every solver here uses only Brownian
increments at grid (and stage) points, so its strong order is 1 (Clark and
Cameron 1980); Euler-Maruyama and EDM's Euler with churn have weak order 1; the
exponential solvers of order >= 2 and Heun with churn have weak order 2 (the
extrapolated x0_hat carries noise, so order 3 in the drift does not raise the
weak order above 2).
"""

from __future__ import annotations

import math

import pytest
import torch

import udm
from udm import rng
from udm.brownian import BrownianPath
from udm.samplers.coordinates import half_log_snr
from udm.theory import GaussianMixture

Tensor = torch.Tensor
MU, S = 0.7, 0.4
VP = udm.get_process("vp")
NEW = ("dpmpp_2m_sde", "dpmpp_3m_sde", "dpmpp_sde", "sa_solver")


def _grid(process: udm.GaussianProcess, n: int, t0: float, t1: float) -> Tensor:
    """n steps uniform in lambda from t0 to t1 > 0 (not into clean data, so the deterministic final step stays out)."""
    lam = torch.linspace(half_log_snr(process, t0), half_log_snr(process, t1), n + 1, dtype=torch.float64)
    times = process.t_from_log_snr(2 * lam)
    times[0], times[-1] = t0, t1
    return times


class _Recording:
    def __init__(self) -> None:
        self.ws: set[float] = set()

    def normal(self, w_a: float, w_b: float) -> Tensor:
        self.ws.update((w_a, w_b))
        return torch.zeros(1, 1, dtype=torch.float64)


class _Symbolic:
    """W at the recorded times as a differentiable function of independent normals ``xi`` (one per time)."""

    def __init__(self, ws: set[float]) -> None:
        self.ws = sorted(w for w in ws if w > 0)
        self.xi = torch.zeros(len(self.ws), dtype=torch.float64, requires_grad=True)
        steps = torch.diff(torch.tensor([0.0, *self.ws], dtype=torch.float64)).sqrt()
        self.values = torch.cumsum(steps * self.xi, 0)
        self.index = {w: i for i, w in enumerate(self.ws)}

    def _at(self, w: float) -> Tensor:
        return torch.zeros((), dtype=torch.float64) if w == 0 else self.values[self.index[w]]

    def normal(self, w_a: float, w_b: float) -> Tensor:
        return ((self._at(w_b) - self._at(w_a)) / math.sqrt(abs(w_b - w_a))).reshape(1, 1)


def exact_moment_errors(sampler: str, n: int, process: udm.GaussianProcess = VP, **options: object) -> tuple[float, float]:
    """(|mean error|, |variance error|) of the endpoint law at t_end, in closed form (module docstring)."""
    t0, t1 = 0.999 * float(process.t_max), 0.02 * float(process.t_max)
    times = _grid(process, n, t0, t1)
    den = GaussianMixture([1.0], [[MU]], [S * S]).denoiser(process, "x0")
    recording = _Recording()
    udm.sample(den, sampler, times=times, x_T=torch.zeros(1, 1, dtype=torch.float64), dtype=torch.float64, noise=recording, **options)
    symbolic = _Symbolic(recording.ws)
    x_T = torch.zeros(1, 1, dtype=torch.float64, requires_grad=True)
    out = udm.sample(den, sampler, times=times, x_T=x_T, dtype=torch.float64, noise=symbolic, check_finite=False, **options)
    g_x, g_xi = torch.autograd.grad(out.sum(), [x_T, symbolic.xi], allow_unused=True)
    a, s = float(process.alpha(t0)), float(process.sigma(t0))
    mean = float(out.detach()) + float(g_x) * a * MU
    var = float(g_x) ** 2 * (a * a * S * S + s * s) + (float((g_xi**2).sum()) if g_xi is not None else 0.0)
    a, s = float(process.alpha(t1)), float(process.sigma(t1))
    return abs(mean - a * MU), abs(var - (a * a * S * S + s * s))


WEAK = [
    ("euler_maruyama", {}, 1.0),
    ("dpmpp_2m_sde", {"lower_order_final": False}, 2.0),
    ("dpmpp_3m_sde", {"lower_order_final": False}, 2.0),
    ("dpmpp_sde", {}, 2.0),
    ("sa_solver", {"lower_order_final": False}, 2.0),
    ("euler", {"churn": 5.0}, 1.0),
    ("heun", {"churn": 5.0}, 2.0),
]


@pytest.mark.parametrize(("sampler", "options", "order"), WEAK, ids=[w[0] for w in WEAK])
def test_weak_order_on_gaussian_data_in_closed_form(sampler: str, options: dict, order: float) -> None:
    errors = [exact_moment_errors(sampler, n, **options)[1] for n in (128, 256, 512)]
    slopes = [math.log2(a / b) for a, b in zip(errors[:-1], errors[1:])]
    assert all(abs(sl - order) < 0.25 for sl in slopes), (errors, slopes)


@pytest.mark.parametrize("sampler", ["dpmpp_2m_sde", "dpmpp_3m_sde", "sa_solver", "dpmpp_sde"])
def test_exponential_solvers_keep_the_mean_exact_on_gaussian_data(sampler: str) -> None:
    """x0_hat is affine and the mean path is integrated exactly in lambda: only the variance carries error."""
    assert exact_moment_errors(sampler, 16)[0] < 1e-12


def _fine_path_errors(sampler: str, ns: tuple[int, ...], process: udm.GaussianProcess = VP, **options: object) -> list[float]:
    """RMS distance of the n-step endpoints to the 1024-step endpoint of the same sampler on the same Brownian paths."""
    t0, t1 = 0.999 * float(process.t_max), 0.02 * float(process.t_max)
    den = GaussianMixture([1.0], [[MU]], [S * S]).denoiser(process, "x0")
    x_T = torch.randn(64, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def run(n: int) -> Tensor:
        return udm.sample(den, sampler, times=_grid(process, n, t0, t1), x_T=x_T, seeds=list(range(64)), dtype=torch.float64, **options)

    fine = run(1024)
    return [float((run(n) - fine).pow(2).mean().sqrt()) for n in ns]


STRONG = [
    ("euler_maruyama", {}),
    ("dpmpp_2m_sde", {"lower_order_final": False}),
    ("dpmpp_3m_sde", {"lower_order_final": False}),
    ("dpmpp_sde", {}),
    ("sa_solver", {"lower_order_final": False}),
]


@pytest.mark.parametrize(("sampler", "options"), STRONG, ids=[s[0] for s in STRONG])
def test_strong_order_one_and_refinement_walks_the_same_path(sampler: str, options: dict) -> None:
    """2n steps land closer than n to the fine solution of the same path, at order 1 (increments only: Clark-Cameron)."""
    errors = _fine_path_errors(sampler, (16, 32, 64, 128), **options)
    assert all(b < a for a, b in zip(errors[:-1], errors[1:])), errors
    slope = math.log2(errors[0] / errors[-1]) / 3
    assert abs(slope - 1.0) < 0.25, errors


def _isotropic_denoiser() -> udm.Denoiser:
    """Exact x0 for N(0.3, 0.5^2 I) data: elementwise, so a row's result cannot depend on the batch."""
    return GaussianMixture.isotropic([1.0], [[0.3] * 6], 0.5).denoiser(VP, "x0")


@pytest.mark.parametrize(
    ("sampler", "options"),
    [(s, {}) for s in NEW] + [("euler_maruyama", {}), ("euler", {"churn": 10.0}), ("heun", {"churn": 10.0})],
)
def test_a_seed_gives_the_same_sample_alone_or_in_a_batch_of_64(sampler: str, options: dict) -> None:
    den = _isotropic_denoiser()
    grid = "karras" if sampler in ("euler", "heun") else "uniform"
    batch = udm.sample(den, sampler, steps=12, grid=grid, shape=(64, 6), seeds=list(range(100, 164)), dtype=torch.float64, **options)
    alone = udm.sample(den, sampler, steps=12, grid=grid, shape=(1, 6), seeds=[137], dtype=torch.float64, **options)
    assert torch.equal(alone[0], batch[37])
    other = udm.sample(den, sampler, steps=12, grid=grid, shape=(1, 6), seeds=[138], dtype=torch.float64, **options)
    assert not torch.equal(other[0], alone[0])


@pytest.mark.parametrize(("sde", "ode", "options"), [("dpmpp_2m_sde", "dpmpp_2m", {}), ("dpmpp_3m_sde", "dpmpp_3m", {})])
def test_eta_zero_is_the_ode_solver_bit_for_bit(sde: str, ode: str, options: dict) -> None:
    gmm = GaussianMixture([0.5, 0.5], [[1.0, 0.0], [-1.0, 0.5]], [0.1, 0.2])
    den = gmm.denoiser(VP, "eps")
    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a = udm.sample(den, sde, steps=9, x_T=x_T, dtype=torch.float64, eta=0.0)
    b = udm.sample(den, ode, steps=9, x_T=x_T, dtype=torch.float64)
    assert torch.equal(a, b)


def test_sa_solver_at_eta_zero_is_a_consistent_ode_solver() -> None:
    """eta = 0 needs no Gaussian noise: it runs on PFGM++ (any linear path) and converges to the same ODE endpoint."""
    gmm = GaussianMixture([0.5, 0.5], [[1.0, 0.0], [-1.0, 0.5]], [0.1, 0.2])
    den = gmm.denoiser(VP, "eps")
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = udm.sample(den, "rk45", steps=1, times=_grid(VP, 1, 0.999, 0.02), x_T=x_T, dtype=torch.float64, rtol=1e-10, atol=1e-10)
    errs = [float((udm.sample(den, "sa_solver", times=_grid(VP, n, 0.999, 0.02), x_T=x_T, dtype=torch.float64, eta=0.0,
                              lower_order_final=False) - ref).abs().max()) for n in (20, 40)]
    assert errs[1] < errs[0] / 6  # order >= 3 on the ODE (predictor 3 + corrector)


@pytest.mark.parametrize("name", ["vp", "ve", "edm", "subvp", "vp_cosine", "ddpm", "rectified_flow"])
@pytest.mark.parametrize("sampler", NEW)
def test_every_gaussian_process_reaches_the_data_law(name: str, sampler: str) -> None:
    """From the prior to clean data: moments of N(0.7, 0.4^2) within MC error after 40 steps.

    The grid is uniform in log-SNR (rectified flow: uniform in t, from its alpha = 0 start, where lambda = -inf).
    """
    process = udm.get_process(name)
    den = GaussianMixture([1.0], [[MU]], [S * S]).denoiser(process, "x0")
    n = 4000
    grid = "uniform" if name == "rectified_flow" else "logsnr"
    out = udm.sample(den, sampler, steps=40, grid=grid, shape=(n, 1), seeds=list(range(n)), dtype=torch.float64)
    assert bool(torch.isfinite(out).all())
    assert float(out.mean()) == pytest.approx(MU, abs=4 * S / math.sqrt(n) + 0.01)
    assert float(out.std()) == pytest.approx(S, rel=0.06)


@pytest.mark.parametrize("sampler", NEW)
def test_non_gaussian_noise_is_refused_with_eta(sampler: str) -> None:
    process = udm.get_process("pfgmpp")
    with pytest.raises(ValueError, match=rf"sampler '{sampler}' with eta > 0 needs .*ODE sampler"):
        udm.sample(lambda x, t: x, sampler, steps=3, shape=(2, 3), process=process)


def test_bad_options_are_refused() -> None:
    den = _isotropic_denoiser()
    with pytest.raises(ValueError, match="eta must be a finite number >= 0"):
        udm.sample(den, "dpmpp_2m_sde", steps=3, shape=(2, 6), eta=-1.0)
    with pytest.raises(ValueError, match="order must be 1-4 and corrector_order 0-4"):
        udm.sample(den, "sa_solver", steps=3, shape=(2, 6), order=5)
    with pytest.raises(ValueError, match=r"the stage r must be in \(0, 1\]"):
        udm.sample(den, "dpmpp_sde", steps=3, shape=(2, 6), r=0.0)
    with pytest.raises(ValueError, match="noise must be a noise source with a normal"):
        udm.sample(den, "dpmpp_2m_sde", steps=3, shape=(2, 6), noise=3)
    with pytest.raises(ValueError, match="stochastic churn is defined in the sigma variable"):
        udm.sample(den, "euler", steps=3, shape=(2, 6), churn=1.0, variable="t")
    with pytest.raises(ValueError, match="churn must be >= 0"):
        udm.sample(den, "euler", steps=3, shape=(2, 6), churn=-1.0)


def test_a_given_brownian_path_is_used_as_is() -> None:
    """noise= takes a BrownianPath; built from the same seeds it reproduces the seeded run."""
    den = _isotropic_denoiser()
    x_T = rng.randn((4, 6), rng.generators_from_seeds(range(4)), dtype=torch.float64)
    seeded = udm.sample(den, "sa_solver", steps=8, x_T=x_T, seeds=list(range(4)), dtype=torch.float64)
    path = BrownianPath.from_generator(rng.generators_from_seeds(range(4)), x_T)  # x_T is given: the keys are the first draws
    assert torch.equal(udm.sample(den, "sa_solver", steps=8, x_T=x_T, dtype=torch.float64, noise=path), seeded)
