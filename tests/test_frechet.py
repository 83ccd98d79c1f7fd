"""udm.metrics.frechet_distance / frechet_from_moments: closed forms, zero on identical sets, symmetry, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from udm.metrics import frechet_distance, frechet_from_moments


def _diag_closed_form(mu1, a, mu2, b) -> float:
    """Fréchet distance between N(mu1, diag(a)) and N(mu2, diag(b)): |dmu|^2 + sum (sqrt(a) - sqrt(b))^2."""
    return float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())


def test_moments_diagonal_exact():
    rng = np.random.default_rng(0)
    d = 6
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.uniform(0.1, 3.0, size=d), rng.uniform(0.1, 3.0, size=d)
    got = frechet_from_moments(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(_diag_closed_form(mu1, a, mu2, b), rel=1e-10, abs=1e-12)


def test_moments_commuting_and_general():
    # Commuting covariances Q diag(a) Q^T, Q diag(b) Q^T: the same closed form as the diagonal case.
    rng = np.random.default_rng(1)
    d = 5
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a, b = rng.uniform(0.2, 2.0, size=d), rng.uniform(0.2, 2.0, size=d)
    c1, c2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu = np.zeros(d)
    assert frechet_from_moments(mu, c1, mu, c2) == pytest.approx(_diag_closed_form(mu, a, mu, b), rel=1e-8)
    # A general pair: compare with tr(C1 + C2 - 2 (C1^(1/2) C2 C1^(1/2))^(1/2)), the symmetric form.
    m1, m2 = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    c1, c2 = m1 @ m1.T + 0.1 * np.eye(d), m2 @ m2.T + 0.1 * np.eye(d)
    w, v = np.linalg.eigh(c1)
    r1 = v @ np.diag(np.sqrt(w)) @ v.T
    w2 = np.linalg.eigvalsh(r1 @ c2 @ r1)
    expected = np.trace(c1) + np.trace(c2) - 2 * np.sqrt(np.clip(w2, 0, None)).sum()
    assert frechet_from_moments(mu, c1, mu, c2) == pytest.approx(expected, rel=1e-8)
    # Torch inputs give the same value.
    assert frechet_from_moments(torch.tensor(mu), torch.tensor(c1), torch.tensor(mu), torch.tensor(c2)) == pytest.approx(
        expected, rel=1e-8
    )


def test_samples_match_closed_form():
    g = torch.Generator().manual_seed(0)
    d, n = 4, 200_000
    mu1, mu2 = torch.tensor([0.0, 1.0, -0.5, 2.0]), torch.tensor([0.5, 1.0, 0.0, 1.0])
    a, b = torch.tensor([1.0, 0.25, 2.0, 0.5]), torch.tensor([0.5, 1.0, 2.0, 0.1])
    x = mu1 + a.sqrt() * torch.randn(n, d, generator=g, dtype=torch.float64)
    y = mu2 + b.sqrt() * torch.randn(n, d, generator=g, dtype=torch.float64)
    expected = _diag_closed_form(mu1.numpy(), a.numpy(), mu2.numpy(), b.numpy())
    assert frechet_distance(x, y) == pytest.approx(expected, rel=2e-2)
    # float32 inputs are promoted: same value to float32 rounding of the data.
    assert frechet_distance(x.float(), y.float()) == pytest.approx(frechet_distance(x, y), rel=1e-4)


def test_zero_for_identical_sets_and_symmetric():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(500, 8, generator=g) @ torch.randn(8, 8, generator=g)
    y = torch.randn(300, 8, generator=g) * 2 + 1
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(x, y) == pytest.approx(frechet_distance(y, x), rel=1e-8)
    assert frechet_distance(x, y) > 1.0
    # Images (n, C, H, W) are flattened like the other metrics.
    imgs = torch.randn(50, 1, 2, 2, generator=g)
    assert math.isfinite(frechet_distance(imgs, imgs + 0.1))
    assert frechet_distance(imgs, imgs + 0.1) == pytest.approx(4 * 0.01, rel=1e-6)


def test_errors():
    with pytest.raises(ValueError, match="same dimension"):
        frechet_distance(torch.randn(10, 3), torch.randn(10, 4))
    with pytest.raises(ValueError, match="at least 2 samples"):
        frechet_distance(torch.randn(1, 3), torch.randn(10, 3))
    with pytest.raises(ValueError, match="moment shapes"):
        frechet_from_moments(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def test_sample_path_matches_the_moments_path_and_is_exact_when_singular():
    """From samples, FD is computed as a nuclear norm (no matrix square root): it agrees with the sqrtm formula on
    full-rank covariances, and stays exact when n <= d makes them singular (a shifted copy is at |shift|^2)."""
    g = torch.Generator().manual_seed(4)
    for n, m, d in ((400, 300, 12), (60, 40, 20)):
        a = torch.randn(d, d, generator=g, dtype=torch.float64)
        x = torch.randn(n, d, generator=g, dtype=torch.float64) @ a
        y = torch.randn(m, d, generator=g, dtype=torch.float64) @ a * 1.2 + 0.3

        def moments(s):
            c = s - s.mean(0)
            return s.mean(0), c.T @ c / (len(s) - 1)

        assert frechet_distance(x, y) == pytest.approx(frechet_from_moments(*moments(x), *moments(y)), rel=1e-9)
    x = torch.randn(20, 100, generator=g, dtype=torch.float64)
    shift = torch.linspace(-1, 1, 100, dtype=torch.float64)
    assert frechet_distance(x, x + shift) == pytest.approx(float(shift.square().sum()), rel=1e-10)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
