"""Tests for udm.metrics: closed forms, exact references (scipy / brute-force numpy) and input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from scipy.spatial.distance import cdist, pdist

import udm.metrics as metrics
import udm.metrics.inputs as metric_inputs
from udm.metrics import energy_distance, mean_cov_error, mmd, sliced_wasserstein, two_sample_floor


def _normal(n: int, d: int, seed: int, shift: float | np.ndarray = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) + torch.as_tensor(shift, dtype=torch.float64)


@pytest.fixture
def tiny_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force many small distance blocks and a multi-pass median selection on small inputs."""
    monkeypatch.setattr(metric_inputs, "BLOCK_ELEMS", 7)
    monkeypatch.setattr(metrics, "_SELECT_CAP", 5)
    monkeypatch.setattr(metrics, "_N_BINS", 3)


# ----------------------------------------------------------------------------- sliced Wasserstein


def test_sliced_wasserstein_1d_shift_equals_shift() -> None:
    # In 1-D W_p(N(0,1), N(mu,1)) = |mu| for every p. With n = 20000 the sampling error is dominated
    # by the difference of sample means, std sqrt(2/n) = 0.01, i.e. 0.5 % of mu = 2: 3 % is > 5 sigma.
    mu = 2.0
    x, y = _normal(20000, 1, 0), _normal(20000, 1, 1, shift=mu)
    for p in (1, 2):
        assert sliced_wasserstein(x, y, n_projections=1, p=p).item() == pytest.approx(mu, rel=0.03)
    # Translating the very same sample gives exactly |mu| on every direction.
    for p in (1, 2, 3):
        assert sliced_wasserstein(x, x - mu, n_projections=5, p=p).item() == pytest.approx(mu, rel=1e-12)


def test_sliced_wasserstein_matches_closed_form_for_shifted_gaussians() -> None:
    # On direction theta the projected laws are N(0,1) and N(theta.mu,1), so W_2 = |theta.mu| and
    # SW_2 = sqrt(E (theta.mu)^2) = |mu| / sqrt(d). With 4000 directions in d = 2 the Monte-Carlo
    # error of E (theta.mu)^2 is ~1.1 % (about 0.6 % on SW_2), the sampling error smaller still.
    d, mu = 2, np.array([1.5, -2.0])
    x, y = _normal(4000, d, 2), _normal(4000, d, 3, shift=mu)
    sw = sliced_wasserstein(x, y, n_projections=4000, p=2).item()
    assert sw == pytest.approx(np.linalg.norm(mu) / math.sqrt(d), rel=0.03)


@pytest.mark.parametrize("sizes", [(37, 23), (50, 50), (1, 9)])
def test_sliced_wasserstein_1d_exact_against_scipy(sizes: tuple[int, int]) -> None:
    n, m = sizes
    rng = np.random.default_rng(4)
    u, v = rng.normal(size=n), rng.gamma(2.0, size=m)
    ours = sliced_wasserstein(torch.from_numpy(u)[:, None], torch.from_numpy(v)[:, None], n_projections=1, p=1)
    assert ours.item() == pytest.approx(scipy.stats.wasserstein_distance(u, v), abs=1e-10)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.5])
def test_sliced_wasserstein_1d_unequal_sizes_exact_by_replication(p: float) -> None:
    # Repeating each point of u m/g times and each point of v n/g times (g = gcd) leaves both laws
    # unchanged and makes the sizes equal, where W_p^p is the mean of |sorted differences|^p.
    n, m = 6, 4
    rng = np.random.default_rng(5)
    u, v = rng.normal(size=n), rng.normal(size=m) + 0.3
    g = math.gcd(n, m)
    uu, vv = np.sort(np.repeat(u, m // g)), np.sort(np.repeat(v, n // g))
    reference = np.mean(np.abs(uu - vv) ** p) ** (1 / p)
    ours = sliced_wasserstein(torch.from_numpy(u)[:, None], torch.from_numpy(v)[:, None], n_projections=1, p=p)
    assert ours.item() == pytest.approx(reference, abs=1e-12)


def test_sliced_wasserstein_deterministic_and_chunk_independent(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _normal(40, 3, 6), _normal(30, 3, 7, shift=0.5)
    default = sliced_wasserstein(x, y, n_projections=16)
    assert default.item() == sliced_wasserstein(x, y, n_projections=16, generator=0).item()
    assert default.item() != sliced_wasserstein(x, y, n_projections=16, generator=1).item()
    monkeypatch.setattr(metric_inputs, "BLOCK_ELEMS", 150)  # two directions per chunk
    assert sliced_wasserstein(x, y, n_projections=16).item() == pytest.approx(default.item(), rel=1e-12)


# ----------------------------------------------------------------------------- MMD


def _mmd_brute(x: np.ndarray, y: np.ndarray, hs: list[float], unbiased: bool) -> float:
    def gram(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        sq = cdist(a, b, "sqeuclidean")
        return sum(np.exp(-sq / (2 * h * h)) for h in hs)

    kxx, kyy, kxy = gram(x, x), gram(y, y), gram(x, y)
    n, m = len(x), len(y)
    if unbiased:
        return (
            (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
            + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * kxy.mean()
        )
    return kxx.mean() + kyy.mean() - 2 * kxy.mean()


@pytest.mark.parametrize("blocks", [False, True])
def test_mmd_matches_brute_force(blocks: bool, request: pytest.FixtureRequest) -> None:
    if blocks:
        request.getfixturevalue("tiny_blocks")
    x, y = _normal(9, 3, 8), _normal(6, 3, 9, shift=0.4)
    xn, yn = x.numpy(), y.numpy()
    median = float(np.median(pdist(np.concatenate([xn, yn]))))
    for unbiased in (True, False):
        for bandwidth, hs in ((None, [median]), (0.8, [0.8]), ([0.5, 2.0], [0.5, 2.0])):
            ours = mmd(x, y, bandwidth=bandwidth, unbiased=unbiased).item()
            assert ours == pytest.approx(_mmd_brute(xn, yn, hs, unbiased), abs=1e-12)


def test_mmd_median_heuristic_exact_with_ties(tiny_blocks: None) -> None:
    # Lattice points give many tied distances; the multi-pass selection must still hit the exact median.
    g = torch.Generator().manual_seed(10)
    for n in (40, 41):  # even and odd number of pairs
        z = torch.randint(0, 4, (n, 2), generator=g).to(torch.float64)
        expected = np.median(pdist(z.numpy()))
        assert metrics._median_pairwise_distance(z).item() == expected
    z = _normal(60, 4, 11)
    assert metrics._median_pairwise_distance(z).item() == pytest.approx(np.median(pdist(z.numpy())), rel=1e-15)


def test_mmd_unbiased_under_null_and_biased_is_not() -> None:
    # Same law: the U-statistic has mean 0 (its average over 30 draws lies within 3 standard errors
    # of 0) while the V-statistic is biased upwards by ~(2 - E k - E k') / n > 0.
    u, v = [], []
    for seed in range(30):
        x, y = _normal(100, 2, 100 + 2 * seed), _normal(100, 2, 101 + 2 * seed)
        u.append(mmd(x, y, bandwidth=1.0).item())
        v.append(mmd(x, y, bandwidth=1.0, unbiased=False).item())
    se_u, se_v = np.std(u, ddof=1) / math.sqrt(30), np.std(v, ddof=1) / math.sqrt(30)
    assert abs(np.mean(u)) < 3 * se_u
    assert np.mean(v) > 3 * se_v
    assert min(u) < 0 < min(v)


def test_mmd_biased_unbiased_relation() -> None:
    # V = U + (1 - Kxx_u)/n + (1 - Kyy_u)/m, where K.._u are the off-diagonal kernel means.
    x, y = _normal(12, 2, 12), _normal(8, 2, 13, shift=0.3)
    h = 0.9
    kx = np.exp(-pdist(x.numpy(), "sqeuclidean") / (2 * h * h)).mean()
    ky = np.exp(-pdist(y.numpy(), "sqeuclidean") / (2 * h * h)).mean()
    u = mmd(x, y, bandwidth=h).item()
    v = mmd(x, y, bandwidth=h, unbiased=False).item()
    assert v == pytest.approx(u + (1 - kx) / 12 + (1 - ky) / 8, abs=1e-13)
    assert mmd(x, x, bandwidth=h, unbiased=False).item() == pytest.approx(0.0, abs=1e-14)


def test_mmd_detects_and_orders_shifts() -> None:
    x = _normal(400, 2, 14)
    same = mmd(x, _normal(400, 2, 15), bandwidth=1.0).item()
    values = [mmd(x, _normal(400, 2, 15, shift=s), bandwidth=1.0).item() for s in (0.25, 0.5, 1.0)]
    assert abs(same) < 0.01 < values[0]  # the null value is O(1/n) = O(2.5e-3)
    assert values[0] < values[1] < values[2]


# ----------------------------------------------------------------------------- energy distance


@pytest.mark.parametrize("sizes", [(50, 70), (31, 31)])
def test_energy_distance_matches_scipy_in_1d(sizes: tuple[int, int]) -> None:
    # scipy returns sqrt(2E|X-Y| - E|X-X'| - E|Y-Y'|) with V-statistics (all pairs).
    n, m = sizes
    rng = np.random.default_rng(16)
    u, v = rng.normal(size=n), rng.standard_t(3, size=m)
    ours = energy_distance(torch.from_numpy(u)[:, None], torch.from_numpy(v)[:, None], unbiased=False)
    assert math.sqrt(ours.item()) == pytest.approx(scipy.stats.energy_distance(u, v), abs=1e-10)


@pytest.mark.parametrize("blocks", [False, True])
def test_energy_distance_unbiased_matches_brute_force(blocks: bool, request: pytest.FixtureRequest) -> None:
    if blocks:
        request.getfixturevalue("tiny_blocks")
    x, y = _normal(10, 3, 17), _normal(7, 3, 18, shift=0.5)
    xn, yn = x.numpy(), y.numpy()
    reference = 2 * cdist(xn, yn).mean() - pdist(xn).mean() - pdist(yn).mean()
    assert energy_distance(x, y).item() == pytest.approx(reference, abs=1e-12)


def test_energy_distance_orders_shifts() -> None:
    x = _normal(300, 2, 19)
    same = energy_distance(x, _normal(300, 2, 20)).item()
    values = [energy_distance(x, _normal(300, 2, 20, shift=s)).item() for s in (0.25, 0.5, 1.0)]
    assert abs(same) < values[0] < values[1] < values[2]


# ----------------------------------------------------------------------------- moments


def test_mean_cov_error_closed_form() -> None:
    # The 2d points m +- s e_i have sample mean m exactly and unbiased covariance 2 s^2 I / (2d - 1).
    d = 3
    eye = torch.eye(d, dtype=torch.float64)
    m1, m2 = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64), torch.tensor([0.5, 0.0, 1.0], dtype=torch.float64)
    s1, s2 = 1.5, 0.5
    x = torch.cat([m1 + s1 * eye, m1 - s1 * eye])
    y = torch.cat([m2 + s2 * eye, m2 - s2 * eye])
    err = mean_cov_error(x, y)
    assert set(err) == {"mean", "cov"}
    assert err["mean"].item() == pytest.approx(torch.linalg.norm(m1 - m2).item(), abs=1e-12)
    assert err["cov"].item() == pytest.approx(2 * (s1**2 - s2**2) / (2 * d - 1) * math.sqrt(d), abs=1e-12)


# ----------------------------------------------------------------------------- conventions


def test_dtype_flattening_and_promotion() -> None:
    x, y = _normal(20, 6, 21), _normal(15, 6, 22, shift=0.2)
    x3, y3 = x.reshape(20, 2, 3), y.reshape(15, 3, 2)
    for fn in (mmd, energy_distance, sliced_wasserstein):
        assert fn(x3, y3).item() == fn(x, y).item()
        assert fn(x, y).dtype == torch.float64
        assert fn(x.float(), y.float()).dtype == torch.float32
        assert fn(x.float(), y).dtype == torch.float64
        assert fn(x.float(), y.float()).item() == pytest.approx(fn(x, y).item(), rel=1e-4)
    assert mean_cov_error(x3, y3)["cov"].item() == mean_cov_error(x, y)["cov"].item()


def test_two_sample_floor() -> None:
    data = _normal(400, 2, 23)

    def sw(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return sliced_wasserstein(a, b, n_projections=32)

    floor = two_sample_floor(sw, data, 100, repeats=4)
    assert floor == two_sample_floor(sw, data, 100, repeats=4)
    assert floor != two_sample_floor(sw, data, 100, generator=1, repeats=4)
    # A positive floor, well below the score of data shifted by (1, 1) (population SW_2 = 1).
    assert 0 < floor < 0.5 * sw(data[:100], data[100:200] + 1).item()


def test_two_sample_floor_draws_disjoint_subsets() -> None:
    # With n = N/2 two disjoint subsets of size n partition the data.
    data = torch.arange(20, dtype=torch.float64).reshape(10, 2)
    pairs = []

    def record(a: torch.Tensor, b: torch.Tensor) -> float:
        pairs.append((a, b))
        return 0.0

    two_sample_floor(record, data, 5, generator=3, repeats=3)
    assert len(pairs) == 3
    for a, b in pairs:
        assert a.shape == b.shape == (5, 2)
        assert sorted(torch.cat([a, b])[:, 0].tolist()) == data[:, 0].tolist()
    with pytest.raises(ValueError, match=r"data must have at least 2n = 12 samples, got 10"):
        two_sample_floor(record, data, 6)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: mmd(torch.zeros(5, 2), torch.zeros(5, 3)), r"x and y must have the same dimension, got 2 and 3"),
        (lambda: energy_distance(torch.zeros(5), torch.zeros(5, 1)), r"x must be 2-D \(n, d\), got shape \(5,\)"),
        (lambda: sliced_wasserstein(torch.zeros(5, 1), torch.zeros(())), r"y must be 2-D \(n, d\), got shape \(\)"),
        (lambda: mmd(torch.zeros(1, 2), torch.ones(4, 2)), r"x must have at least 2 samples for this estimate, got 1"),
        (lambda: mean_cov_error(torch.zeros(0, 2), torch.ones(4, 2)), r"x must contain at least one sample"),
        (lambda: mmd(torch.zeros(4, 2), torch.ones(4, 2), bandwidth=0.0), r"bandwidth must be positive"),
        (lambda: mmd(torch.zeros(4, 2), torch.zeros(4, 2)), r"median-heuristic bandwidth is 0"),
        (lambda: sliced_wasserstein(torch.zeros(4, 2), torch.ones(4, 2), p=0.5), r"p must be a finite number >= 1"),
        (lambda: sliced_wasserstein(torch.zeros(4, 2), torch.ones(4, 2), n_projections=0), r"n_projections must"),
    ],
)
def test_input_errors(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
