"""Conditioning on observed data (udm.conditioning) against the exact posterior of Gaussian mixtures and point masses.

The oracle is :meth:`GaussianMixture.condition` (p(x0 | y) for y = A x0 + sigma_y n);
MMD is compared with its two-sample floor (``udm.metrics.two_sample_floor``) and
with the spread of the same statistic between two exact samples.
"""

from __future__ import annotations

import functools
import math

import pytest
import scipy.stats
import torch

import udm
from udm.conditioning import PosteriorGuidance, Replacement, inpaint, sdedit, start_times
from udm.errors import ConfigError
from udm.metrics import mmd, two_sample_floor
from udm.processes.blur import BlurProcess
from udm.processes.discrete import sample_categorical
from udm.processes.fade import FadeProcess
from udm.processes.pooling import PoolProcess
from udm.theory import GaussianMixture, PointMasses

F64 = torch.float64


def _null(ref: torch.Tensor, n: int, repeats: int = 8) -> tuple[float, float]:
    """(floor, spread): the mean and standard deviation of MMD between two exact samples of size n (two_sample_floor)."""
    values = torch.tensor([two_sample_floor(mmd, ref, n, generator=k, repeats=1) for k in range(repeats)])
    return float(values.mean()), float(values.std())


def _selection(mask: torch.Tensor) -> torch.Tensor:
    """A = I[mask]: the observation operator of a coordinate mask."""
    return torch.eye(mask.numel(), dtype=F64)[mask]


# --- the oracle ---------------------------------------------------------------------------------


def test_mixture_posterior_is_bayes_rule() -> None:
    """condition(A, y, sigma_y) is p0(x) N(y; Ax, sigma_y^2) up to a constant; an exact mask pins the observed coordinates."""
    g = torch.Generator().manual_seed(0)
    rot, _ = torch.linalg.qr(torch.randn(3, 3, 3, generator=g, dtype=F64))
    covs = rot @ torch.diag_embed(0.1 + torch.rand(3, 3, generator=g, dtype=F64)) @ rot.transpose(1, 2)
    gmm = GaussianMixture([0.2, 0.5, 0.3], torch.randn(3, 3, generator=g, dtype=F64), covs)
    a, y, sy = torch.randn(2, 3, generator=g, dtype=F64), torch.tensor([0.3, -0.2], dtype=F64), 0.4
    post = gmm.condition(a, y, sy)
    x = 2 * torch.randn(50, 3, generator=g, dtype=F64)
    joint = gmm.log_prob(x) - 0.5 * ((x @ a.T - y) ** 2).sum(1) / sy**2
    gap = post.log_prob(x) - joint
    assert float(gap.max() - gap.min()) < 1e-10
    mask = torch.tensor([True, False, True])
    exact = gmm.condition(_selection(mask), torch.tensor([0.5, -1.0], dtype=F64))
    torch.testing.assert_close(exact.means[:, mask], torch.tensor([[0.5, -1.0]] * 3, dtype=F64), rtol=0, atol=1e-12)
    assert float(exact.covs[:, mask].abs().max()) < 1e-12


# --- the per-step projection --------------------------------------------------------------------


def test_observe_is_the_forward_map_and_tokens_stay() -> None:
    """Process.observe(y, t) = F_t(y, eps): mean alpha_t y, std sigma_t; y itself at t = 0; token processes keep y."""
    vp = udm.get_process("vp")
    y = torch.full((20000, 1), 2.0, dtype=F64)
    obs = vp.observe(y, 0.5, generator=0)
    assert abs(float(obs.mean()) - 2 * float(vp.alpha(0.5))) < 0.02 and abs(float(obs.std()) - float(vp.sigma(0.5))) < 0.02
    assert torch.equal(vp.observe(y, 0.0, generator=0), y)
    tokens = torch.randint(0, 5, (3, 8))
    assert udm.get_process("mask", vocab_size=5, seq_len=8).observe(tokens, 4.0) is tokens


def _vp_gmm() -> GaussianMixture:
    return GaussianMixture.isotropic([0.5, 0.5], [[-1.0, -1.0, 0.0], [1.0, 1.0, 0.5]], 0.5)


@pytest.mark.parametrize("sampler", [s for s in udm.SAMPLERS.names() if s != "mask_confidence"])
def test_every_sampler_keeps_the_observed_coordinates(sampler: str) -> None:
    """After the last step the observed part equals y exactly (F_0(y, eps) = y), for every sampler of a Gaussian process."""
    process, gmm = udm.get_process("vp"), _vp_gmm()
    y, mask = gmm.sample(16, 1).to(torch.float32), torch.tensor([True, False, True])
    seen = []
    out = inpaint(gmm.denoiser(process, "x0"), y, mask, sampler, 8, seeds=range(16), callback=seen.append)
    assert torch.equal(out[:, mask], y[:, mask]) and len(seen) == 8 and bool(torch.isfinite(out).all())


def test_soft_mask_of_zeros_and_ones_is_the_hard_mask() -> None:
    """m * F_t(y) + (1 - m) x with m in {0, 1} is exactly the boolean replacement (same draws, same result)."""
    process, gmm = udm.get_process("edm"), _vp_gmm()
    y, mask = gmm.sample(8, 1), torch.tensor([True, False, True])
    den = gmm.denoiser(process, "x0")
    hard = inpaint(den, y, mask, "heun", 6, seeds=range(8), dtype=F64)
    soft = inpaint(den, y, mask.to(F64), "heun", 6, seeds=range(8), dtype=F64)
    assert torch.equal(hard, soft)


# --- replacement reaches the posterior where it is exact, and where it is not -------------------


def _product_points(dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Data whose observed half and unobserved half are independent: 2 x 3 grid of centres (points, weights, mask, y)."""
    half = dim // 2
    g = torch.Generator().manual_seed(dim)
    obs, hidden = 2.0 * torch.randn(2, half, generator=g, dtype=F64), 1.5 * torch.randn(3, dim - half, generator=g, dtype=F64)
    w_obs, w_hidden = torch.tensor([0.4, 0.6], dtype=F64), torch.tensor([0.5, 0.3, 0.2], dtype=F64)
    points = torch.cat([obs.repeat_interleave(3, 0), hidden.repeat(2, 1)], 1)
    weights = w_obs.repeat_interleave(3) * w_hidden.repeat(2)
    mask = torch.arange(dim) < half
    return points, weights, mask, points[3]


@functools.lru_cache(maxsize=None)
def _product_case(dim: int, kind: str) -> tuple[object, torch.Tensor, torch.Tensor, torch.Tensor, float, float]:
    """(data, mask, y, exact posterior draws, floor, spread): a product mixture (Gaussian noise) or point masses (any kernel)."""
    points, weights, mask, y = _product_points(dim)
    n = 1000
    if kind == "gmm":
        data = GaussianMixture.isotropic(weights, points, 0.4)
        ref = data.condition(_selection(mask), y[mask]).sample(3 * n, 7)
    else:
        data = PointMasses(points, weights)
        ref = PointMasses(points[3:], weights[3:]).sample(3 * n, 7)
    return (data, mask, y, ref, *_null(ref, n))


class _PointNet(torch.nn.Module):
    """The exact x0 of point-mass data under any process with a transition density (THEORY §10.2)."""

    def __init__(self, data: PointMasses, process: udm.Process) -> None:
        super().__init__()
        self.data, self.process = data, process

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.data.posterior_mean(x, t.to(F64), self.process)


@pytest.mark.parametrize("dim", [2, 16])
@pytest.mark.parametrize(
    "name, sampler, steps", [("vp", "ddpm", 400), ("edm", "heun", 40), ("rectified_flow", "euler", 100), ("pfgmpp", "heun", 40)]
)
def test_replacement_reaches_the_posterior_when_the_blocks_are_independent(name: str, sampler: str, steps: int, dim: int) -> None:
    """MMD to the exact posterior within its floor where p0 = p(x_o) p(x_u), for VP, EDM, rectified flow and PFGM++.

    VP, EDM and rectified flow use the mixture's exact denoiser. PFGM++ (D = 4) has
    no closed-form mixture denoiser in udm.theory (its Student-t kernel), so it uses
    point masses, whose exact denoiser holds for any kernel; its radial noise
    couples the blocks at t > 0, so this is not automatic there. DDPM on VP runs
    400 steps: at 100 its own discretization bias (MMD 9e-4 +- 8e-4 over ten seed
    sets, exact draws 2e-4 +- 5e-4) reaches the threshold for one seed set in ten.
    """
    process = udm.get_process(name, D=4.0) if name == "pfgmpp" else udm.get_process(name)
    data, mask, y, ref, floor, spread = _product_case(dim, "points" if name == "pfgmpp" else "gmm")
    den = udm.Denoiser(_PointNet(data, process), process, "x0") if name == "pfgmpp" else data.denoiser(process, "x0")
    n = 1000
    out = inpaint(den, y.expand(n, dim), mask, sampler, steps, seeds=range(n), dtype=F64)
    assert torch.equal(out[:, mask], y[mask].expand(n, -1))
    assert float(mmd(out, ref[:n])) < floor + 4 * spread, (float(mmd(out, ref[:n])), floor, spread)


COUPLED = GaussianMixture.isotropic([0.5, 0.5], [[-0.8, -0.8], [0.8, 0.8]], 0.6)


def test_replacement_is_biased_on_coupled_data_and_repaint_reduces_it() -> None:
    """Where x_u depends on x_o, replacement conditions on a noisy y: biased with 50 or 200 steps alike; RePaint cuts it.

    Two overlapping correlated components, x_1 = 0.5 observed: replacement puts too much
    mass on the far component at any step count; RePaint (jump 5) lowers the MMD as r grows.
    """
    process, n = udm.get_process("vp"), 1000
    mask, y = torch.tensor([True, False]), torch.tensor([0.5, 0.0], dtype=F64).expand(n, 2)
    ref = COUPLED.condition(_selection(mask), y[0, :1]).sample(3 * n, 7)
    floor, spread = _null(ref, n)
    den = COUPLED.denoiser(process, "x0")

    def score(steps: int, r: int) -> float:
        return float(mmd(inpaint(den, y, mask, "ddpm", steps, seeds=range(n), dtype=F64, resample=r, jump=5), ref[:n]))

    plain = [score(50, 1), score(200, 1)]
    repaint = [score(50, 5), score(50, 10)]
    assert min(plain) > floor + 20 * spread, (plain, floor, spread)
    assert plain[0] > repaint[0] > repaint[1], (plain, repaint)
    assert repaint[1] < plain[0] / 10


def test_gaussian_transition_keeps_the_marginals() -> None:
    """RePaint's jump back up: x_s = F_s(x0, eps) sent through q(x_t | x_s) has the law of F_t(x0, eps')."""
    for name in ("vp", "edm", "rectified_flow"):
        p = udm.get_process(name)
        s, t = 0.2 * p.t_max, 0.7 * p.t_max
        x0 = torch.full((40000, 1), 1.5, dtype=F64)
        x_s = p.corrupt(x0, s, torch.randn(40000, 1, generator=torch.Generator().manual_seed(1), dtype=F64))
        x_t = p.transition(x_s, s, t, generator=2)
        a, sd = float(p.alpha(t)), float(p.sigma(t))
        assert abs(float(x_t.mean()) - 1.5 * a) < 4 * sd / 200 and abs(float(x_t.std()) / sd - 1) < 0.02


# --- posterior sampling (DPS) -------------------------------------------------------------------

GAUSS = GaussianMixture.isotropic([1.0], [[0.5, -0.5, 0.0]], 0.8)  # N(m, 0.64 I)
A = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, -1.0]], dtype=F64)
Y, SIGMA_Y = torch.tensor([0.3, -0.4], dtype=F64), 0.2


def _conditional_mean(gmm: GaussianMixture, process: udm.Process, x: torch.Tensor, t: float) -> torch.Tensor:
    """E[x0 | x_t, y] exactly: x_t/sigma = (alpha/sigma) x0 + eps and y/sigma_y = (A/sigma_y) x0 + n, one linear observation."""
    a, s = float(process.alpha(t)), float(process.sigma(t))
    op = torch.cat([a / s * torch.eye(gmm.dim, dtype=F64), A / SIGMA_Y])
    rows = []
    for row in x:
        post = gmm.condition(op, torch.cat([row / s, Y / SIGMA_Y]), 1.0)
        rows.append(post.weights @ post.means)
    return torch.stack(rows)


@pytest.mark.parametrize("name", ["vp", "edm", "rectified_flow"])
def test_posterior_guidance_is_exact_bayes_for_gaussian_data(name: str) -> None:
    """With the x0-posterior variance of N(m, v I) data the guided x0 is E[x0 | x_t, y] to rounding; DPS's own weighting is not."""
    process = udm.get_process(name)
    den = GAUSS.denoiser(process, "x0")
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    for t in (0.9 * process.t_max, 0.3 * process.t_max, 0.05 * process.t_max):
        exact = _conditional_mean(GAUSS, process, x, t)
        torch.testing.assert_close(PosteriorGuidance(den, A, Y, SIGMA_Y, data_variance=0.64)(x, t), exact, rtol=1e-9, atol=1e-9)
    assert float((PosteriorGuidance(den, A, Y, SIGMA_Y)(x, t) - exact).abs().max()) > 1e-2


def test_posterior_samples_approach_the_posterior_as_the_steps_are_refined() -> None:
    """Gaussian data, y = A x0 + 0.2 n: sample mean and covariance errors fall with the step count to Monte-Carlo level.

    DPS's weighting 1/sigma_y^2 overshoots at high noise: it diverges on a 10-step grid
    and needs the finer grids; the x0-posterior variance term keeps every grid stable.
    """
    process, n = udm.get_process("edm"), 2000
    post = GAUSS.condition(A, Y, SIGMA_Y)
    den = GAUSS.denoiser(process, "x0")

    def errors(guide: PosteriorGuidance, steps: int) -> tuple[float, float]:
        x = udm.sample(guide, "heun", steps, shape=(n, 3), seeds=range(n), dtype=F64)
        return float((x.mean(0) - post.means[0]).norm()), float((torch.cov(x.T) - post.covs[0]).norm())

    exact = PosteriorGuidance(den, A, Y, SIGMA_Y, data_variance=0.64)
    coarse, fine = errors(exact, 10), errors(exact, 80)
    assert fine[1] < coarse[1] / 3 and fine[0] < 4 * math.sqrt(float(post.covs[0].trace()) / n), (coarse, fine)
    assert fine[1] < 0.06
    dps = PosteriorGuidance(den, A, Y, SIGMA_Y)
    assert errors(dps, 10)[0] > 1.0 and errors(dps, 80)[1] < 0.1


# --- SDEdit -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, sampler", [("vp", "ddpm"), ("vp", "dpmpp_2m"), ("rectified_flow", "heun"), ("edm", "unipc")])
def test_sdedit_at_strength_one_is_unconditional_sampling(name: str, sampler: str) -> None:
    """Strength 1 starts from the prior draw of the same seeds: the unconditional result, bit for bit."""
    process, gmm = udm.get_process(name), _vp_gmm()
    y = gmm.sample(32, 1).to(torch.float32)
    den = gmm.denoiser(process, "x0")
    free = udm.sample(den, sampler, 12, shape=y.shape, seeds=range(32))
    assert torch.equal(sdedit(den, y, 1.0, sampler, 12, seeds=range(32)), free)


def test_sdedit_moves_away_from_the_input_as_strength_grows() -> None:
    """Mean distance to the input rises with strength (until VP forgets y, near strength 0.7); strength -> 0 returns the input."""
    process, gmm = udm.get_process("vp"), _vp_gmm()
    y = gmm.sample(500, 2)
    den = gmm.denoiser(process, "x0")
    strengths = (0.05, 0.1, 0.2, 0.3, 0.45, 0.6)
    dist = [float((sdedit(den, y, s, "ddpm", 50, seeds=range(500), dtype=F64) - y).norm(dim=1).mean()) for s in strengths]
    assert all(a < b for a, b in zip(dist, dist[1:])), dist
    near = [float((sdedit(den, y, s, "euler", 20, seeds=range(500), dtype=F64) - y).abs().max()) for s in (1e-2, 1e-4, 1e-6)]
    assert near[0] > near[1] > near[2] and near[2] < 1e-3, near


def test_strength_picks_the_grid_tail() -> None:
    """start_times: strength 1 is the grid; strength k/n its last k steps (also when (1 - s) n rounds below k); else t0 interpolated."""
    process = udm.get_process("vp")
    grid = udm.get_grid("uniform", process, 10)
    assert torch.equal(start_times(grid, 1.0, process), grid)
    assert torch.equal(start_times(grid, 0.3, process), grid[7:])
    part = start_times(grid, 0.35, process)
    assert len(part) == 5 and abs(float(part[0]) - 0.35) < 1e-12 and torch.equal(part[1:], grid[7:])
    fine = udm.get_grid("uniform", process, 100)
    for strength in (0.2, 0.4, 0.6, 0.8):  # (1 - s) n is an integer up to rounding: exactly the grid's last s n steps
        assert torch.equal(start_times(fine, strength, process), fine[round((1 - strength) * 100) :])


# --- cold processes (THEORY §4.2): blur, pooling, fade -----------------------------------------

COLD = {
    "blur": lambda: BlurProcess(10, 1.0, sigma_schedule="linear", kernel_size=3, std_rate=0.1),
    "blur_dct": lambda: BlurProcess(10, 1.0, sigma_schedule="linear", form="dct", blur_min=0.3, blur_max=3.0),
    "pool": lambda: PoolProcess((4, 4), sigma=1.0, sigma_schedule="linear"),
    "fade": lambda: FadeProcess(10, 1.0, sigma_schedule="linear", k_std=0.4),
}
COLD_MASK = (torch.arange(4) < 2).expand(1, 4, 4)  # the left half of a 4x4 one-channel image is observed


def _cold_images(coupled: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Point-mass images (J, 1, 4, 4), their weights, the index of each one's left and right half, the right halves.

    Two left halves and three right halves: every pair with product weights
    (independent halves), or four pairs in which the right half depends on the left.
    """
    g = torch.Generator().manual_seed(0)
    left, right = torch.randn(2, 1, 4, 2, generator=g, dtype=F64), torch.randn(3, 1, 4, 2, generator=g, dtype=F64)
    if coupled:
        pairs, weights = [(0, 0), (0, 1), (1, 1), (1, 2)], [0.3, 0.2, 0.3, 0.2]
    else:
        pairs = [(a, b) for a in range(2) for b in range(3)]
        weights = [wa * wb for wa in (0.4, 0.6) for wb in (0.5, 0.3, 0.2)]
    images = torch.stack([torch.cat([left[a], right[b]], -1) for a, b in pairs])
    index = torch.tensor(pairs)
    return images, torch.tensor(weights, dtype=F64), index[:, 0], index[:, 1], right


def _cold_infill(name: str, coupled: bool, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(infills, y, the data's right halves, the exact p(right half | left half of y)) for image 0's left half observed.

    The denoiser draws x0 ~ p(x0 | x_t) exactly (weights pi_j N(x_t; D_t(x_j), sigma_t^2 I)),
    so the unconditional loop is exact (THEORY §3.1 consequence 2). The start is
    F_T(x0, eps) with x0 from the exact conditional: a cold process does not forget
    x0 at T, so a start drawn without y would carry the other left half.
    """
    process = COLD[name]()
    images, weights, left, right, halves = _cold_images(coupled)
    gen = torch.Generator().manual_seed(1)

    def draw(x: torch.Tensor, t: float) -> torch.Tensor:
        centres = process.degrade(images, t)
        var = float(process.sigma_at(t, images[:1])) ** 2
        log_w = torch.log(weights) - ((x[:, None] - centres[None]) ** 2).sum((2, 3, 4)) / (2 * var)
        return images[sample_categorical(torch.softmax(log_w, -1), gen)]

    given = weights * (left == left[0])
    g = torch.Generator().manual_seed(2)
    x0 = images[sample_categorical(given.expand(n, -1), g)]
    x_T = process.corrupt(x0, process.T, process.sample_noise(x0.shape, g, dtype=F64))
    y = torch.where(COLD_MASK, images[0], torch.zeros(())).expand(n, -1, -1, -1)  # nothing of the right half is given
    out = inpaint(draw, y, COLD_MASK, "udm_deterministic", process.T, x_T=x_T, process=process, generator=3, dtype=F64)
    exact = torch.zeros(len(halves), dtype=F64).index_add_(0, right, given)
    return out, y, halves, exact / exact.sum()


@pytest.mark.parametrize("name", list(COLD))
def test_cold_inpainting_keeps_the_observed_pixels_and_fills_from_the_data(name: str) -> None:
    """Blur, pooling, fade (sigma_t = sigma t / T: F_0 is the identity): y's pixels come back exactly; every fill is a data right half."""
    out, y, halves, _ = _cold_infill(name, False, 500)
    assert torch.equal(out[..., :2], y[..., :2]) and bool(torch.isfinite(out).all())
    gap = ((out[:, None, ..., 2:] - halves[None]) ** 2).sum((2, 3, 4)).min(1).values
    assert float(gap.max()) < 1e-20


COLD_CASES = [  # (process, coupled halves, replacement exact)
    ("fade", False, True),
    ("fade", True, False),
    ("blur", False, False),
    ("blur", True, False),
    ("blur_dct", True, False),
    ("pool", False, False),
    ("pool", True, False),
]


@pytest.mark.parametrize("name, coupled, exact", COLD_CASES)
def test_cold_inpainting_against_the_exact_conditional(name: str, coupled: bool, exact: bool) -> None:
    """Which right half the fills take, against p(right | left) by chi-square (n = 4000, df = halves - 1, level 1e-3).

    Fade is coordinate-wise, so, as with Gaussian noise, replacement is exact
    for independent halves (chi-square 1.8, df 2, p = 0.42) and biased for
    coupled ones (543, and 17% of the fills take the half that never goes with
    the observed one: the observed pixels near the fade centre stay invisible
    while the hidden half is decided). Blur and pooling mix pixels across the
    mask edge, so the hidden pixels of x_t carry the observed half's content as
    the state's own, not y's: biased for independent halves (blur 200, pooling
    421, df 2) and for coupled ones (blur 16, blur_dct 29, pooling 122, df 1).
    With sigma = 0.3 instead of 1 the coupled cases pass: x_T then still holds
    the start's x0, which the exact start draws given y.
    """
    out, _, halves, p = _cold_infill(name, coupled, 4000)
    which = ((out[:, None, ..., 2:] - halves[None]) ** 2).sum((2, 3, 4)).argmin(1)
    counts = torch.bincount(which, minlength=len(halves)).to(F64)
    possible = p > 0
    expected = len(out) * p[possible]
    stat = float(((counts[possible] - expected) ** 2 / expected).sum())
    p_value = float(scipy.stats.chi2.sf(stat, int(possible.sum()) - 1))
    impossible = int(counts[~possible].sum())
    assert (impossible == 0 and p_value >= 1e-3) == exact, (stat, p_value, impossible)


# --- mistakes -----------------------------------------------------------------------------------


def test_mistakes_are_one_line_config_errors() -> None:
    """Mask/observation shapes, strength outside (0, 1], r > 1 without a forward transition, ...: one ConfigError line each."""
    process, gmm = udm.get_process("vp"), _vp_gmm()
    den, y, mask = gmm.denoiser(process, "x0"), gmm.sample(4, 1), torch.tensor([True, False, True])
    mistakes = [
        ("must broadcast to the observation", lambda: Replacement(process, y, torch.ones(2, dtype=torch.bool))),
        ("samples have shape", lambda: inpaint(den, y, mask, "ddpm", 4, x_T=torch.randn(5, 3))),
        ("soft mask must lie in", lambda: Replacement(process, y, torch.tensor([0.5, 1.5, 0.0]))),
        ("only resample=1 is available", lambda: inpaint(den, y, mask, "heun", 4, process=udm.get_process("pfgmpp"), resample=3)),
        ("resample must be an integer", lambda: inpaint(den, y, mask, "ddpm", 4, resample=0)),
        ("give sigma_y > 0 or data_variance", lambda: PosteriorGuidance(den, A, Y)),
    ]
    strength = r"strength must lie in \(0, 1\]"
    mistakes += [(strength, lambda s=s: sdedit(den, y, s, "ddpm", 4)) for s in (0.0, -0.2, 1.5, float("nan"))]
    for pattern, call in mistakes:
        with pytest.raises(ConfigError, match=pattern) as caught:
            call()
        assert "\n" not in str(caught.value)


def test_a_sampler_without_a_projection_parameter_is_refused() -> None:
    def plain(den, proc, x, times, *, callback=None):
        return x

    udm.SAMPLERS.register("plain_for_test", plain)
    try:
        gmm, mask = _vp_gmm(), torch.tensor([True, False, True])
        with pytest.raises(ConfigError, match="takes no per-step projection"):
            inpaint(gmm.denoiser(udm.get_process("vp"), "x0"), gmm.sample(2, 1), mask, "plain_for_test", 2)
    finally:
        udm.SAMPLERS.unregister("plain_for_test")
