"""Gaussian-mixture data: closed-form noisy marginals, scores and x0-posteriors (THEORY §10.1, §2.3).

p_0 = sum_k pi_k N(m_k, S_k) pushed through x_t = a x0 + b eps (a = alpha_t, b = sigma_t):

* marginal   p_t = sum_k pi_k N(a m_k, C_k),  C_k = a^2 S_k + b^2 I;
* score      grad log p_t = sum_k r_k(x) [-C_k^{-1} (x - a m_k)],  r_k = p_t(y = k | x);
* posterior  p(x0 | x_t) = sum_k r_k N(m_k + a S_k C_k^{-1} (x - a m_k),  S_k - a^2 S_k C_k^{-1} S_k);
* ideal eps* = -b grad log p_t, x0* = E[x0 | x_t], velocity* = alpha' x0* + sigma' eps*;
* observation  y = A x0 + sigma_y n gives p(x0 | y), again a Gaussian mixture
  (:meth:`GaussianMixture.condition`, the oracle of :mod:`udm.conditioning`).

Each S_k is diagonalized once (S_k = U_k diag(l_k) U_k^T), so every quantity at
any (x, t), with per-sample t, costs O(n K d^2) and needs no matrix inversion.
All arithmetic is float64. These are public API: an oracle for testing samplers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .. import rng
from ..denoiser import Denoiser, EDMParameterization, from_x0, get_parameterization
from ..processes.base import time_tensor
from ..processes.gaussian import GaussianProcess

Tensor = torch.Tensor


class GaussianMixture:
    """A K-component Gaussian mixture in R^d with exact quantities under any Gaussian process.

    ``covs`` may be (K, d, d) full covariances, (K, d) diagonals, or (K,) isotropic variances.
    """

    def __init__(self, weights: Sequence[float] | Tensor, means: Sequence | Tensor, covs: Sequence | Tensor) -> None:
        w = torch.as_tensor(weights, dtype=torch.float64)
        m = torch.as_tensor(means, dtype=torch.float64)
        c = torch.as_tensor(covs, dtype=torch.float64)
        if m.ndim != 2 or w.shape != (m.shape[0],):
            raise ValueError(f"means must be (K, d) and weights (K,), got {tuple(m.shape)} and {tuple(w.shape)}")
        if (w < 0).any() or float(w.sum()) <= 0:
            raise ValueError("mixture weights must be non-negative with a positive sum")
        k, d = m.shape
        if c.shape == (k,):
            c = c[:, None, None] * torch.eye(d, dtype=torch.float64)
        elif c.shape == (k, d):
            c = torch.diag_embed(c)
        if c.shape != (k, d, d):
            raise ValueError(f"covs must be (K,), (K, d) or (K, d, d) with K={k}, d={d}; got {tuple(c.shape)}")
        self.weights, self.means, self.covs = w / w.sum(), m, 0.5 * (c + c.transpose(1, 2))
        evals, self._U = torch.linalg.eigh(self.covs)
        if float(evals.min()) < -1e-12:
            raise ValueError("component covariances must be positive semi-definite")
        self._lam = evals.clamp_min(0.0)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @classmethod
    def isotropic(cls, weights: Sequence[float], means: Sequence, std: float | Sequence[float]) -> GaussianMixture:
        """A mixture of N(m_k, s_k^2 I) components."""
        means = torch.as_tensor(means, dtype=torch.float64)
        s = torch.as_tensor(std, dtype=torch.float64).expand(means.shape[0])
        return cls(weights, means, s**2)

    # --- sampling -------------------------------------------------------------------------------
    def sample(self, n: int, generator: rng.GeneratorLike = None, *, return_labels: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """n draws from p_0 (float64); with ``return_labels`` also the component index y."""
        gen = rng.as_generator(generator)
        u = rng.rand((n,), gen, dtype=torch.float64)
        y = torch.searchsorted(torch.cumsum(self.weights, 0), u, right=True).clamp_max(len(self.weights) - 1)
        z = rng.randn((n, self.dim), gen, dtype=torch.float64)
        x = self.means[y] + torch.einsum("nij,nj->ni", self._U[y], self._lam[y].sqrt() * z)
        return (x, y) if return_labels else x

    # --- the noisy marginal ---------------------------------------------------------------------
    def _ab(self, x: Tensor, t: float | Tensor, process: GaussianProcess | None) -> tuple[Tensor, Tensor]:
        """(alpha_t, sigma_t) shaped (n|1, 1, 1); the clean data (1, 0) when ``process`` is None."""
        if process is None:
            one = torch.ones(1, 1, 1, dtype=torch.float64, device=x.device)
            return one, torch.zeros_like(one)
        tt = time_tensor(t, x).reshape(-1, 1, 1) if torch.as_tensor(t).ndim else time_tensor(t).reshape(1, 1, 1)
        return process.alpha(tt).to(x.device), process.sigma(tt).to(x.device)

    def _parts(self, x: Tensor, t: float | Tensor, process: GaussianProcess | None) -> dict[str, Tensor]:
        x = x.to(torch.float64)
        a, b = self._ab(x, t, process)  # (n|1, 1, 1)
        dev = x.device
        U, lam, m = self._U.to(dev), self._lam.to(dev), self.means.to(dev)
        z = torch.einsum("kji,nkj->nki", U, x[:, None, :] - a * m[None])  # U_k^T (x - a m_k)
        c = a * a * lam[None] + b * b  # eigenvalues of C_k, (n, K, d)
        log_n = -0.5 * (z * z / c).sum(-1) - 0.5 * torch.log(c).sum(-1) - 0.5 * self.dim * math.log(2 * math.pi)
        logits = torch.log(self.weights.to(dev))[None] + log_n
        return {"a": a, "b": b, "z": z, "c": c, "U": U, "lam": lam, "m": m, "logits": logits}

    def log_prob(self, x: Tensor, t: float | Tensor = 0.0, process: GaussianProcess | None = None) -> Tensor:
        """log p_t(x) (log p_0 when ``process`` is None)."""
        return torch.logsumexp(self._parts(x, t, process)["logits"], -1)

    def log_prob_components(self, x: Tensor, t: float | Tensor, process: GaussianProcess) -> Tensor:
        """log pi_k + log N(x; a m_k, C_k), shape (n, K)."""
        return self._parts(x, t, process)["logits"]

    def class_probs(self, x: Tensor, t: float | Tensor, process: GaussianProcess) -> Tensor:
        """p_t(y = k | x) = r_k(x), shape (n, K) (THEORY §2.3: labels are the component index)."""
        return torch.softmax(self._parts(x, t, process)["logits"], -1)

    def score(self, x: Tensor, t: float | Tensor, process: GaussianProcess, *, y: Tensor | int | None = None) -> Tensor:
        """grad_x log p_t(x), or grad_x log p_t(x | y) for a component label ``y``."""
        p = self._parts(x, t, process)
        comp = -torch.einsum("kij,nkj->nki", p["U"], p["z"] / p["c"])  # -C_k^{-1}(x - a m_k)
        r = self._weights_for(p, y)
        return (r[..., None] * comp).sum(1)

    def _weights_for(self, p: dict[str, Tensor], y: Tensor | int | None) -> Tensor:
        r = torch.softmax(p["logits"], -1)
        if y is None:
            return r
        y = torch.as_tensor(y, device=r.device).expand(r.shape[0])
        return torch.nn.functional.one_hot(y, r.shape[1]).to(r.dtype)

    def eps(self, x: Tensor, t: float | Tensor, process: GaussianProcess, *, y: Tensor | int | None = None) -> Tensor:
        """The ideal noise prediction eps* = -sigma_t grad log p_t (finite at sigma = 0)."""
        p = self._parts(x, t, process)
        comp = torch.einsum("kij,nkj->nki", p["U"], p["b"] * p["z"] / p["c"])
        return (self._weights_for(p, y)[..., None] * comp).sum(1)

    # --- the x0 posterior -----------------------------------------------------------------------
    def posterior(self, x: Tensor, t: float | Tensor, process: GaussianProcess) -> tuple[Tensor, Tensor, Tensor]:
        """p(x0 | x_t): (weights (n, K), means (n, K, d), covariances (n|1, K, d, d))."""
        p = self._parts(x, t, process)
        a, b, U, lam = p["a"], p["b"], p["U"], p["lam"]
        means = p["m"][None] + torch.einsum("kij,nkj->nki", U, a * lam[None] / p["c"] * p["z"])
        post_lam = lam[None] * b * b / p["c"]  # (n, K, d)
        covs = torch.einsum("kij,nkj,klj->nkil", U, post_lam, U)
        return torch.softmax(p["logits"], -1), means, covs

    def posterior_mean(self, x: Tensor, t: float | Tensor, process: GaussianProcess, *, y: Tensor | int | None = None) -> Tensor:
        """E[x0 | x_t] (the ideal x0 prediction), optionally given the label y."""
        p = self._parts(x, t, process)
        means = p["m"][None] + torch.einsum("kij,nkj->nki", p["U"], p["a"] * p["lam"][None] / p["c"] * p["z"])
        return (self._weights_for(p, y)[..., None] * means).sum(1)

    def posterior_sample(self, x: Tensor, t: float | Tensor, process: GaussianProcess, generator: rng.GeneratorLike = None) -> Tensor:
        """One draw x0 ~ p(x0 | x_t) per row of x (THEORY §3.1, consequence 2)."""
        gen = rng.as_generator(generator)
        p = self._parts(x, t, process)
        n = x.shape[0]
        r = torch.softmax(p["logits"], -1)
        u = rng.rand((n,), gen, dtype=torch.float64, device=x.device)
        k = torch.searchsorted(torch.cumsum(r, -1), u[:, None], right=True).squeeze(-1).clamp_max(r.shape[1] - 1)
        idx = torch.arange(n, device=x.device)
        z, c, lam = p["z"][idx, k], p["c"].expand(n, -1, -1)[idx, k], p["lam"][k]
        a, b = p["a"].reshape(-1, 1), p["b"].reshape(-1, 1)
        U = p["U"][k]
        xi = rng.randn((n, self.dim), gen, dtype=torch.float64, device=x.device)
        coord = a * lam / c * z + torch.sqrt(lam * b * b / c) * xi
        return p["m"][k] + torch.einsum("nij,nj->ni", U, coord)

    # --- conditioning on a linear observation ---------------------------------------------------
    def condition(self, A: Tensor | Sequence, y: Tensor | Sequence[float], sigma_y: float = 0.0) -> GaussianMixture:
        """p(x0 | y) for y = A x0 + sigma_y n, n ~ N(0, I): a Gaussian mixture (THEORY §10.1, §2.1).

        Per component, with G_k = A S_k A^T + sigma_y^2 I and K_k = S_k A^T G_k^{-1}:
        weight ∝ pi_k N(y; A m_k, G_k), mean m_k + K_k (y - A m_k), covariance
        S_k - K_k A S_k (the Gaussian conditioning formulas). ``A`` is (m, d); a
        coordinate mask is the selection A = I[mask]. sigma_y = 0 (an exact
        observation) is allowed where every G_k is invertible; the covariances
        are then singular along the observed directions.
        """
        a = torch.as_tensor(A, dtype=torch.float64)
        obs = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
        if a.ndim != 2 or a.shape[1] != self.dim or obs.shape != (a.shape[0],):
            raise ValueError(f"A must be (m, {self.dim}) and y (m,); got A {tuple(a.shape)} and y {tuple(obs.shape)}")
        if not sigma_y >= 0:
            raise ValueError(f"sigma_y must be >= 0, got {sigma_y!r}")
        sa = self.covs @ a.T  # S_k A^T, (K, d, m)
        g = a @ sa + sigma_y**2 * torch.eye(a.shape[0], dtype=torch.float64)  # (K, m, m)
        residual = obs - self.means @ a.T  # y - A m_k, (K, m)
        chol, info = torch.linalg.cholesky_ex(g)
        if bool(info.any()):
            raise ValueError("A S_k A^T + sigma_y^2 I is singular for some component; give sigma_y > 0 or a full-rank A")
        solved = torch.cholesky_solve(residual.unsqueeze(-1), chol).squeeze(-1)  # G_k^{-1} (y - A m_k)
        log_det = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        log_w = torch.log(self.weights) - 0.5 * (residual * solved).sum(-1) - 0.5 * log_det
        means = self.means + (sa @ solved.unsqueeze(-1)).squeeze(-1)
        covs = self.covs - sa @ torch.cholesky_solve(sa.transpose(1, 2), chol)
        return GaussianMixture(torch.softmax(log_w, 0), means, covs)

    # --- ideal network outputs ------------------------------------------------------------------
    def predict(self, x: Tensor, t: float | Tensor, process: GaussianProcess, kind: str = "x0", *, y: Tensor | int | None = None) -> Tensor:
        """The exact target of parameterization ``kind`` (x0, eps, score, v, velocity, edm) at (x_t, t)."""
        if kind == "eps":
            return self.eps(x, t, process, y=y)
        if kind == "score":
            return self.score(x, t, process, y=y)
        x0 = self.posterior_mean(x, t, process, y=y)
        if kind == "velocity":
            tt = time_tensor(t, x)
            return process.dalpha(tt) * x0 + process.dsigma(tt) * self.eps(x, t, process, y=y)
        return from_x0(x0, x.to(torch.float64), t, process, kind)

    def denoiser(
        self,
        process: GaussianProcess,
        prediction: str = "eps",
        *,
        posterior_sample: bool = False,
        generator: rng.GeneratorLike = None,
    ) -> Denoiser:
        """A :class:`~udm.Denoiser` whose 'network' is exact: the ideal ``prediction`` output.

        With ``posterior_sample=True`` it returns a draw x0 ~ p(x0 | x_t) instead
        of the posterior mean (the oracle-posterior test of THEORY §3.3).
        """
        gen = rng.as_generator(generator)
        kind = "x0" if posterior_sample else prediction
        param = get_parameterization(kind)

        def net(x_in: Tensor, t_in: Tensor) -> Tensor:
            t = _time_from_input(process, kind, t_in)
            flat = x_in.reshape(x_in.shape[0], -1).to(torch.float64)
            if isinstance(param, EDMParameterization):  # undo x_in = c_in x_t / alpha
                tt = t.reshape(-1, 1)
                flat = flat * process.alpha(tt) * torch.sqrt(process.sigma_tilde(tt) ** 2 + param.sigma_data**2)
            if posterior_sample:
                out = self.posterior_sample(flat, t, process, gen)
            else:
                out = self.predict(flat, t, process, kind)
            return out.reshape(x_in.shape).to(x_in.dtype)

        return Denoiser(net, process, param)


def _time_from_input(process: GaussianProcess, prediction: str, t_in: Tensor) -> Tensor:
    """Recover process time from what the Denoiser fed the net (EDM feeds c_noise = log(sigma~)/4)."""
    t_in = t_in.to(torch.float64)
    if prediction == "edm":
        return process.t_from_sigma_tilde(torch.exp(4.0 * t_in))
    return t_in
