"""Weighted point-mass data p_0 = sum_j pi_j delta(x - x_j) (THEORY §10.2).

For any process with a transition density p_t(x | x0) (the method
``process.log_kernel(x_t, x0, t)``) the noisy marginal, its score, the
posterior weights w_j(x) = pi_j p_t(x | x_j) / p_t(x) and the ideal x0
prediction E[x0 | x_t] = sum_j w_j x_j are exact. The score comes from
autograd of log p_t, so a new kernel needs no new code here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import rng
from ..processes.base import KernelDensity, Process, require

Tensor = torch.Tensor


class PointMasses:
    """Data made of J points with weights (THEORY §10.2)."""

    def __init__(self, points: Sequence | Tensor, weights: Sequence[float] | Tensor | None = None) -> None:
        pts = torch.as_tensor(points, dtype=torch.float64)
        if pts.ndim == 1:
            pts = pts[:, None]
        w = torch.ones(pts.shape[0], dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (pts.shape[0],) or (w < 0).any() or float(w.sum()) <= 0:
            raise ValueError(f"weights must be non-negative, one per point ({pts.shape[0]}), with a positive sum")
        self.points, self.weights = pts, w / w.sum()

    def sample(self, n: int, generator: rng.GeneratorLike = None) -> Tensor:
        """n draws from p_0."""
        u = rng.rand((n,), rng.as_generator(generator), dtype=torch.float64)
        j = torch.searchsorted(torch.cumsum(self.weights, 0), u, right=True).clamp_max(len(self.weights) - 1)
        return self.points[j]

    def _log_joint(self, x: Tensor, t: float | Tensor, process: Process) -> Tensor:
        process = require(process, KernelDensity, "the point-mass marginal")
        n, j = x.shape[0], self.points.shape[0]
        xs = x.to(torch.float64).repeat_interleave(j, 0)
        x0 = self.points.to(x.device).repeat(n, 1)
        tt = torch.as_tensor(t, dtype=torch.float64, device=x.device)
        tt = tt.repeat_interleave(j) if tt.ndim else tt
        log_k = process.log_kernel(xs, x0, tt).reshape(n, j)
        return torch.log(self.weights.to(x.device))[None] + log_k

    def log_prob(self, x: Tensor, t: float | Tensor, process: Process) -> Tensor:
        """log p_t(x) = log sum_j pi_j p_t(x | x_j)."""
        return torch.logsumexp(self._log_joint(x, t, process), -1)

    def posterior_weights(self, x: Tensor, t: float | Tensor, process: Process) -> Tensor:
        """w_j(x) = p(x0 = x_j | x_t = x), shape (n, J)."""
        return torch.softmax(self._log_joint(x, t, process), -1)

    def posterior_mean(self, x: Tensor, t: float | Tensor, process: Process) -> Tensor:
        """E[x0 | x_t = x] = sum_j w_j x_j."""
        return self.posterior_weights(x, t, process) @ self.points.to(x.device)

    def score(self, x: Tensor, t: float | Tensor, process: Process) -> Tensor:
        """grad_x log p_t(x), by autograd of :meth:`log_prob`."""
        with torch.enable_grad():
            xg = x.detach().to(torch.float64).requires_grad_(True)
            (g,) = torch.autograd.grad(self.log_prob(xg, t, process).sum(), xg)
        return g
