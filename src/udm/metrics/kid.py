"""Kernel Inception Distance: the unbiased squared MMD with the cubic polynomial kernel (Bińkowski et al. 2018).

KID compares two feature sets x (n, d) and y (m, d) with the kernel
k(a, b) = (a.b / d + 1)^3, which matches the laws' first three moments:

    KID = E k(X, X') + E k(Y, Y') - 2 E k(X, Y)

estimated by the U-statistic (within-set means over i != j). Unlike the
Fréchet distance it is unbiased at every sample size, so values from different
n are comparable and two samples of one law average 0 (a single estimate can
be slightly negative).

Published KIDs (torch-fidelity, clean-fid) average the estimate over 100
random subsets of 1000 points. Each subset estimate is unbiased, so their mean
has the same expectation as the estimate on all points; :func:`kid` computes
the latter by default (lower variance) with a jackknife standard error, and the
subset protocol on request (``subset_size``), with the subsets' spread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .inputs import GeneratorLike, as_generator, as_pair, rows_per_block

__all__ = ["KID", "kid", "polynomial_kernel"]


def polynomial_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """k(a_i, b_j) = (a_i . b_j / d + 1)^3 for rows of ``a`` (p, d) and ``b`` (q, d): a (p, q) matrix."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def polynomial_kernel_diagonal(z: torch.Tensor) -> torch.Tensor:
    """k(z_i, z_i) for each row of ``z``."""
    return ((z * z).sum(1) / z.shape[1] + 1.0) ** 3


@dataclass(frozen=True)
class KID:
    """A KID estimate: ``value``, its ``stderr``, the sample sizes, and how it was estimated.

    ``method`` is ``"all"`` (one U-statistic on every point; ``stderr`` is the
    two-sample jackknife's) or ``"subsets"`` (the mean over ``subsets`` random
    subsets of ``subset_size`` points; ``spread`` is the standard deviation of
    one subset's estimate, what torch-fidelity calls ``kid_std``, and
    ``stderr`` = spread / sqrt(subsets)).
    """

    value: float
    stderr: float
    n_x: int
    n_y: int
    method: str
    subset_size: int | None = None
    subsets: int | None = None
    spread: float | None = None


def _sums(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(r_x, r_y, c_x, c_y): off-diagonal row sums of K_xx and K_yy, and row / column sums of K_xy, in row blocks."""

    def within(z: torch.Tensor) -> torch.Tensor:
        rows = rows_per_block(z.shape[0])
        out = []
        for i0 in range(0, z.shape[0], rows):
            block = z[i0 : i0 + rows]
            k = polynomial_kernel(block, z)
            out.append(k.sum(1) - polynomial_kernel_diagonal(block))
        return torch.cat(out)

    rows = rows_per_block(y.shape[0])
    c_x, c_y = [], y.new_zeros(y.shape[0])
    for i0 in range(0, x.shape[0], rows):
        k = polynomial_kernel(x[i0 : i0 + rows], y)
        c_x.append(k.sum(1))
        c_y = c_y + k.sum(0)
    return within(x), within(y), torch.cat(c_x), c_y


def _unbiased(sxx: torch.Tensor, syy: torch.Tensor, sxy: torch.Tensor, n: int | torch.Tensor, m: int | torch.Tensor) -> torch.Tensor:
    """The U-statistic from the off-diagonal sums S_xx, S_yy and the cross sum S_xy."""
    return sxx / (n * (n - 1)) + syy / (m * (m - 1)) - 2 * sxy / (n * m)


def _kid_all(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(U-statistic on all points, two-sample jackknife standard error), from one pass over the kernel matrices.

    Leaving x_i out removes 2 r_x[i] from S_xx and c_x[i] from S_xy, so every
    leave-one-out estimate comes from the row sums. The jackknife variance of a
    two-sample statistic is (n-1)/n sum_i (theta_(-i) - mean)^2 plus the same
    over y (Arvesen 1969); it is consistent for a non-degenerate U-statistic and
    conservative near KID = 0.
    """
    n, m = x.shape[0], y.shape[0]
    r_x, r_y, c_x, c_y = _sums(x, y)
    sxx, syy, sxy = r_x.sum(), r_y.sum(), c_x.sum()
    value = _unbiased(sxx, syy, sxy, n, m)
    loo_x = _unbiased(sxx - 2 * r_x, syy, sxy - c_x, n - 1, m)
    loo_y = _unbiased(sxx, syy - 2 * r_y, sxy - c_y, n, m - 1)
    var = (n - 1) / n * ((loo_x - loo_x.mean()) ** 2).sum() + (m - 1) / m * ((loo_y - loo_y.mean()) ** 2).sum()
    return float(value), math.sqrt(max(float(var), 0.0))


def _kid_subset(x: torch.Tensor, y: torch.Tensor) -> float:
    """The U-statistic on one (small) pair of sets, from the full kernel matrices."""
    n, m = x.shape[0], y.shape[0]
    kxx, kyy = polynomial_kernel(x, x), polynomial_kernel(y, y)
    sxx = kxx.sum() - kxx.diagonal().sum()
    syy = kyy.sum() - kyy.diagonal().sum()
    return float(_unbiased(sxx, syy, polynomial_kernel(x, y).sum(), n, m))


def kid(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    subset_size: int | None = None,
    subsets: int = 100,
    generator: GeneratorLike = None,
) -> KID:
    """Kernel Inception Distance between feature sets ``x`` (n, d) and ``y`` (m, d), in float64.

    Args:
        x, y: feature sets (n, ...) and (m, ...), flattened to (n, d); at least 3 rows each.
        subset_size: None (default) estimates on all points with a jackknife
            standard error. An integer uses the published protocol instead: the
            mean over ``subsets`` pairs of random subsets of that size (each drawn
            without replacement; capped at n and m).
        subsets: number of subsets for the subset protocol.
        generator: torch.Generator or int seed for the subsets; None means seed 0.

    Returns:
        a :class:`KID` with the value, its standard error and the protocol.
    """
    x, y = as_pair(x, y, min_samples=3)
    x, y = x.to(torch.float64), y.to(torch.float64)
    n, m = x.shape[0], y.shape[0]
    if subset_size is None:
        value, stderr = _kid_all(x, y)
        return KID(value, stderr, n, m, "all")
    if int(subset_size) != subset_size or subset_size < 2:
        raise ValueError(f"subset_size must be an integer >= 2, got {subset_size}")
    if int(subsets) != subsets or subsets < 2:
        raise ValueError(f"subsets must be an integer >= 2, got {subsets}")
    size = min(int(subset_size), n, m)
    g = as_generator(generator)
    values = []
    for _ in range(int(subsets)):
        ix = torch.randperm(n, generator=g, device=g.device)[:size].to(x.device)
        iy = torch.randperm(m, generator=g, device=g.device)[:size].to(y.device)
        values.append(_kid_subset(x[ix], y[iy]))
    v = torch.tensor(values, dtype=torch.float64)
    spread = float(v.std())
    return KID(float(v.mean()), spread / math.sqrt(len(values)), n, m, "subsets", size, int(subsets), spread)
