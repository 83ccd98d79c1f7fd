"""Precision and recall of generated samples by k-nearest-neighbour manifolds (Kynkäänniemi et al. 2019).

A set of feature vectors stands for the support of its law through the union of
balls B(z_i, r_i), with r_i the distance from z_i to its k-th nearest neighbour
in the set (k = 3 by default, as in the paper). Then

* precision = share of generated samples inside the real manifold (fidelity:
  how many samples look like data);
* recall = share of real samples inside the generated manifold (coverage: how
  much of the data the model reaches).

Two sets of one law score near, not at, 1 (a point falls outside the other
set's balls by chance), so a score is read against the floor two real sets get.
A set against itself scores exactly 1 / 1, since every point lies in its own
ball. Distances are computed in float64 from |a|^2 + |b|^2 - 2 a.b in row blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .inputs import as_pair, rows_per_block

__all__ = ["PrecisionRecall", "knn_radii", "manifold_coverage", "precision_recall"]


@dataclass(frozen=True)
class PrecisionRecall:
    """Precision and recall with binomial standard errors sqrt(p (1 - p) / count), given the manifolds."""

    precision: float
    recall: float
    precision_stderr: float
    recall_stderr: float
    k: int


def _squared_distances(a: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    """|a_i - b_j|^2 (clamped at 0 against rounding) for a block ``a`` against all of ``b`` with norms ``b_sq``."""
    return ((a * a).sum(1, keepdim=True) + b_sq - 2.0 * a @ b.T).clamp_min_(0.0)


def knn_radii(z: torch.Tensor, k: int) -> torch.Tensor:
    """Squared distance from each row of ``z`` to its k-th nearest other row (the point itself excluded)."""
    if z.shape[0] <= k:
        raise ValueError(f"k-NN radii with k = {k} need more than {k} points, got {z.shape[0]}")
    z_sq = (z * z).sum(1)
    rows = rows_per_block(z.shape[0])
    out = []
    for i0 in range(0, z.shape[0], rows):
        d = _squared_distances(z[i0 : i0 + rows], z, z_sq)
        d[torch.arange(d.shape[0]), torch.arange(i0, i0 + d.shape[0])] = 0.0  # the point itself, exactly
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(out)


def manifold_coverage(points: torch.Tensor, centres: torch.Tensor, radii_sq: torch.Tensor) -> torch.Tensor:
    """For each row of ``points``: whether it lies in some ball B(centre_i, r_i) (boolean vector)."""
    c_sq = (centres * centres).sum(1)
    rows = rows_per_block(centres.shape[0])
    inside = [
        (_squared_distances(points[i0 : i0 + rows], centres, c_sq) <= radii_sq).any(1) for i0 in range(0, points.shape[0], rows)
    ]
    return torch.cat(inside)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> PrecisionRecall:
    """Improved precision and recall of ``fake`` (m, d) against ``real`` (n, d), k-NN manifolds with ``k`` neighbours.

    Returns a :class:`PrecisionRecall`; the standard errors treat the manifolds
    as fixed (the share of m resp. n independent points that fall inside).
    """
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    real, fake = as_pair(real, fake, min_samples=int(k) + 1)
    real, fake = real.to(torch.float64), fake.to(torch.float64)
    precision = float(manifold_coverage(fake, real, knn_radii(real, int(k))).double().mean())
    recall = float(manifold_coverage(real, fake, knn_radii(fake, int(k))).double().mean())

    def stderr(p: float, count: int) -> float:
        return math.sqrt(p * (1.0 - p) / count)

    return PrecisionRecall(precision, recall, stderr(precision, fake.shape[0]), stderr(recall, real.shape[0]), int(k))
