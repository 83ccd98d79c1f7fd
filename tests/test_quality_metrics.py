"""KID, precision / recall and the Fréchet distance's standard error (udm.metrics): exact references and statistical checks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

import udm.metrics.inputs as metric_inputs
from udm.metrics import frechet_distance, frechet_stderr, kid, precision_recall


def _normal(n: int, d: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scale + shift


def _kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def _kid_reference(x: np.ndarray, y: np.ndarray) -> float:
    """The U-statistic from the full kernel matrices (numpy, no blocks)."""
    n, m = len(x), len(y)
    kxx, kyy = _kernel(x, x), _kernel(y, y)
    return float(
        (kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * _kernel(x, y).mean()
    )


# ----------------------------------------------------------------------------- KID


def test_kid_matches_brute_force_in_any_block_size(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _normal(70, 5, 0), _normal(90, 5, 1, shift=0.4, scale=1.3)
    expected = _kid_reference(x.numpy(), y.numpy())
    assert kid(x, y).value == pytest.approx(expected, rel=1e-12)
    monkeypatch.setattr(metric_inputs, "BLOCK_ELEMS", 100)  # one or two rows per block
    small = kid(x, y)
    assert small.value == pytest.approx(expected, rel=1e-12)
    # The jackknife standard error from row sums equals the one from explicit leave-one-out refits.
    loo = [_kid_reference(np.delete(x.numpy(), i, 0), y.numpy()) for i in range(len(x))]
    loo_y = [_kid_reference(x.numpy(), np.delete(y.numpy(), j, 0)) for j in range(len(y))]
    var = (len(x) - 1) / len(x) * np.sum((np.array(loo) - np.mean(loo)) ** 2)
    var += (len(y) - 1) / len(y) * np.sum((np.array(loo_y) - np.mean(loo_y)) ** 2)
    assert small.stderr == pytest.approx(np.sqrt(var), rel=1e-9)
    # Symmetric, integer and float32 inputs promoted.
    assert kid(y, x).value == pytest.approx(expected, rel=1e-12)
    assert kid(x.float(), y.float()).value == pytest.approx(expected, rel=1e-5)


def test_kid_is_unbiased_on_a_law_with_an_exact_value() -> None:
    """Laws uniform on a few points have an exact KID (enumerate all pairs); the estimate's mean over draws hits it.

    The V-statistic (diagonal kept) is biased by O(1/n) at n = 8 and misses by many standard errors,
    so the check can fail.
    """
    a = np.array([[0.0, 1.0, 2.0], [1.0, -1.0, 0.5], [2.0, 0.0, -1.0], [-1.0, 2.0, 1.0]])
    b = np.array([[0.5, 1.0, 2.0], [1.5, -0.5, 0.0], [-1.0, 0.0, 1.0]])
    exact = _kernel(a, a).mean() + _kernel(b, b).mean() - 2 * _kernel(a, b).mean()
    rng = np.random.default_rng(0)
    n, reps = 8, 3000
    values, biased = [], []
    for _ in range(reps):
        x, y = a[rng.integers(0, len(a), n)], b[rng.integers(0, len(b), n)]
        values.append(kid(torch.tensor(x), torch.tensor(y)).value)
        biased.append(_kernel(x, x).mean() + _kernel(y, y).mean() - 2 * _kernel(x, y).mean())
    values, biased = np.array(values), np.array(biased)
    se = values.std() / np.sqrt(reps)
    assert abs(values.mean() - exact) < 3 * se
    assert abs(biased.mean() - exact) > 10 * se


def test_kid_of_one_law_averages_zero_and_the_jackknife_error_is_calibrated() -> None:
    """Two samples of one law: mean KID 0 within its standard error; for different laws the jackknife
    standard error matches the spread of the estimate over independent draws (within 25%)."""
    same = np.array([kid(_normal(200, 4, 2 * i), _normal(200, 4, 2 * i + 1)).value for i in range(60)])
    assert abs(same.mean()) < 3 * same.std() / np.sqrt(len(same))
    draws = [kid(_normal(300, 4, 1000 + 2 * i), _normal(300, 4, 1001 + 2 * i, shift=0.3)) for i in range(60)]
    spread = np.std([k.value for k in draws])
    assert np.mean([k.stderr for k in draws]) == pytest.approx(spread, rel=0.25)


def test_kid_subset_protocol_averages_to_the_all_points_value() -> None:
    """Each subset estimate is unbiased, so their mean agrees with the estimate on all points within its error."""
    x, y = _normal(2000, 6, 3), _normal(2000, 6, 4, shift=0.2, scale=1.1)
    full = kid(x, y)
    sub = kid(x, y, subset_size=100, subsets=400, generator=7)
    assert sub.method == "subsets" and sub.subset_size == 100 and sub.subsets == 400
    assert sub.stderr == pytest.approx(sub.spread / 20, rel=1e-12)
    assert abs(sub.value - full.value) < 3 * sub.stderr
    assert full.value > 5 * full.stderr  # the laws differ and the estimate says so
    assert kid(x, y, subset_size=100, subsets=50, generator=7) == kid(x, y, subset_size=100, subsets=50, generator=7)


def test_kid_input_errors() -> None:
    x = _normal(10, 3, 0)
    with pytest.raises(ValueError, match="at least 3 samples"):
        kid(x[:2], x)
    with pytest.raises(ValueError, match="subset_size must be an integer >= 2"):
        kid(x, x, subset_size=1)
    with pytest.raises(ValueError, match="subsets must be an integer >= 2"):
        kid(x, x, subset_size=5, subsets=1)
    with pytest.raises(ValueError, match="same dimension"):
        kid(x, _normal(10, 4, 1))


# ----------------------------------------------------------------------------- precision / recall


def _pr_reference(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    def radii(z: np.ndarray) -> np.ndarray:
        d = cdist(z, z)
        return np.sort(d, axis=1)[:, k]  # column 0 is the point itself

    def covered(points: np.ndarray, centres: np.ndarray) -> float:
        return float((cdist(points, centres) <= radii(centres)[None, :]).any(1).mean())

    return covered(fake, real), covered(real, fake)


def test_precision_recall_identical_sets_and_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    x = _normal(300, 6, 0)
    same = precision_recall(x, x)
    assert (same.precision, same.recall, same.precision_stderr) == (1.0, 1.0, 0.0)
    y = _normal(250, 6, 1, shift=0.5)
    expected = _pr_reference(x.numpy(), y.numpy(), 3)
    got = precision_recall(x, y)
    assert (got.precision, got.recall) == pytest.approx(expected, abs=1e-12)
    monkeypatch.setattr(metric_inputs, "BLOCK_ELEMS", 500)
    assert precision_recall(x, y) == got
    assert precision_recall(x, y, k=5).precision >= got.precision  # larger balls cover more


def test_precision_and_recall_fall_as_one_set_moves_away() -> None:
    real = _normal(600, 8, 2)
    scores = [precision_recall(real, _normal(600, 8, 3, shift=s)) for s in (0.0, 0.5, 1.0, 2.0)]
    precisions, recalls = [s.precision for s in scores], [s.recall for s in scores]
    assert precisions[0] > 0.6 and recalls[0] > 0.6  # one law: near 1, not 1 (the floor)
    assert all(a > b for a, b in itertools.pairwise(precisions)) and all(a > b for a, b in itertools.pairwise(recalls))
    assert precisions[-1] < 0.2 and recalls[-1] < 0.2


def test_precision_recall_separate_fidelity_from_coverage() -> None:
    """A model that produces only half the data (one mode of two) keeps its precision and loses recall."""
    g = torch.Generator().manual_seed(5)
    modes = torch.tensor([[-4.0, 0.0], [4.0, 0.0]], dtype=torch.float64)
    real = modes[torch.randint(0, 2, (800,), generator=g)] + 0.5 * torch.randn(800, 2, generator=g, dtype=torch.float64)
    collapsed = modes[0] + 0.5 * torch.randn(800, 2, generator=g, dtype=torch.float64)
    pr = precision_recall(real, collapsed)
    assert pr.precision > 0.9
    assert 0.4 < pr.recall < 0.6
    assert pr.recall_stderr == pytest.approx(np.sqrt(pr.recall * (1 - pr.recall) / 800))


def test_precision_recall_errors() -> None:
    x = _normal(5, 2, 0)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        precision_recall(x, x, k=0)
    with pytest.raises(ValueError, match="at least 4 samples"):
        precision_recall(x[:3], x)


# ----------------------------------------------------------------------------- Fréchet distance: standard error


def test_frechet_bootstrap_error_matches_the_spread_over_draws() -> None:
    """The bootstrap standard error of FD is the spread of FD over independent draws (within 35%)."""
    values, errors = [], []
    for i in range(30):
        x, y = _normal(400, 5, 50 + 2 * i), _normal(400, 5, 51 + 2 * i, shift=0.3, scale=1.2)
        values.append(frechet_distance(x, y))
        errors.append(frechet_stderr(x, y, resamples=20, generator=i))
    assert np.mean(errors) == pytest.approx(np.std(values), rel=0.35)
    x, y = _normal(50, 3, 0), _normal(50, 3, 1)
    assert frechet_stderr(x, y, generator=3) == frechet_stderr(x, y, generator=3)
    with pytest.raises(ValueError, match="resamples must be an integer >= 2"):
        frechet_stderr(x, y, resamples=1)
