"""Conditioning on observed data against the exact posterior of Gaussian mixtures (udm.conditioning).

Every method samples p(x0 | y) with the *exact* unconditional denoiser of the
prior (``GaussianMixture.denoiser``; point masses for PFGM++, whose Student-t
kernel has no closed-form mixture denoiser), so what remains is the bias of
the conditioning rule and of the sampler. The target is exact:
``GaussianMixture.condition(A, y, sigma_y)``.

Cases:

* **independent blocks** (2-D, 16-D): the observed half and the hidden half of
  the data are independent (a 2 x 3 product of components). Replacement is
  exact there in the limit; for PFGM++ the radial noise still couples the halves at t > 0.
* **coupled** (2-D, 16-D): the halves are correlated (two overlapping components in
  2-D; four random full-covariance components in 16-D), half the coordinates
  observed exactly. Replacement, RePaint (jump 5) with r = 1, 5, 10, and the
  posterior guidance with sigma_y = 0 and the x0-posterior variance (PiGDM weighting).
* **linear** (2-D, 16-D): y = A x0 + 0.3 n with a random A (1 x 2, 4 x 16) on the
  coupled mixtures: posterior guidance with DPS's weighting 1/sigma_y^2 and with
  the variance term, on coarse and fine grids.

Columns: MMD^2 (RBF, median heuristic) to n exact posterior draws, its floor
(two exact samples, ``two_sample_floor``, mean ± sd over 8 pairs), and the
errors of the sample mean (|.|_2) and covariance (|.|_F) beside the same floors.

Run: ``python benchmarks/conditioning_gmm.py`` (about 4 minutes on one core);
``--quick`` for a smoke run.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import torch

import udm
from udm.conditioning import PosteriorGuidance, inpaint
from udm.metrics import mean_cov_error, mmd, two_sample_floor
from udm.theory import GaussianMixture, PointMasses

F64 = torch.float64
Tensor = torch.Tensor


def product_points(dim: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A 2 x 3 grid of centres, observed half x hidden half (the same recipe as tests/test_conditioning.py)."""
    half = dim // 2
    g = torch.Generator().manual_seed(dim)
    obs, hidden = 2.0 * torch.randn(2, half, generator=g, dtype=F64), 1.5 * torch.randn(3, dim - half, generator=g, dtype=F64)
    weights = torch.tensor([0.4, 0.6], dtype=F64).repeat_interleave(3) * torch.tensor([0.5, 0.3, 0.2], dtype=F64).repeat(2)
    points = torch.cat([obs.repeat_interleave(3, 0), hidden.repeat(2, 1)], 1)
    return points, weights, torch.arange(dim) < half, points[3]


def coupled(dim: int) -> tuple[GaussianMixture, Tensor, Tensor]:
    """(mixture, mask, observed point): correlated halves, half the coordinates observed."""
    mask = torch.arange(dim) < dim // 2
    if dim == 2:
        return GaussianMixture.isotropic([0.5, 0.5], [[-0.8, -0.8], [0.8, 0.8]], 0.6), mask, torch.tensor([0.5, 0.0], dtype=F64)
    g = torch.Generator().manual_seed(5)
    rot, _ = torch.linalg.qr(torch.randn(4, dim, dim, generator=g, dtype=F64))
    lam = torch.empty(4, dim, dtype=F64).uniform_(math.log(0.05), math.log(0.5), generator=g).exp()
    means = torch.randn(4, dim, generator=g, dtype=F64)
    gmm = GaussianMixture([0.4, 0.3, 0.2, 0.1], means, rot @ torch.diag_embed(lam) @ rot.transpose(1, 2))
    return gmm, mask, gmm.sample(1, 6)[0]


def data_variance(gmm: GaussianMixture) -> float:
    """The mean per-coordinate variance of the mixture (trace of its covariance / d): PiGDM's v."""
    mean = gmm.weights @ gmm.means
    second = (gmm.weights[:, None, None] * (gmm.covs + gmm.means[:, :, None] * gmm.means[:, None, :])).sum(0)
    return float((second - torch.outer(mean, mean)).trace()) / gmm.dim


class PointNet(torch.nn.Module):
    """The exact x0 of point masses under any process with a transition density."""

    def __init__(self, data: PointMasses, process: udm.Process) -> None:
        super().__init__()
        self.data, self.process = data, process

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.data.posterior_mean(x, t.to(F64), self.process)


class Scorer:
    """MMD, mean and covariance errors of a sample against exact posterior draws, with their floors."""

    def __init__(self, ref: Tensor, n: int) -> None:
        self.ref, self.n = ref, n
        self.floors = {}
        for key, metric in self.metrics().items():
            values = torch.tensor([two_sample_floor(metric, ref, n, generator=k, repeats=1) for k in range(8)])
            self.floors[key] = (float(values.mean()), float(values.std()))

    @staticmethod
    def metrics() -> dict[str, Callable[[Tensor, Tensor], float]]:
        return {
            "mmd": lambda a, b: float(mmd(a, b)),
            "mean": lambda a, b: float(mean_cov_error(a, b)["mean"]),
            "cov": lambda a, b: float(mean_cov_error(a, b)["cov"]),
        }

    def row(self, case: str, method: str, x: Tensor, nfe: int, seconds: float) -> str:
        cells = [case, method, str(nfe)]
        for key, metric in self.metrics().items():
            value, (floor, sd) = metric(x, self.ref[: self.n]), self.floors[key]
            if key == "mmd":
                cells += [f"{value:.2e}", f"{floor:.1e} ± {sd:.1e}"]
            else:
                cells += [f"{value:.3f}", f"{floor:.3f}"]
        return "| " + " | ".join(cells + [f"{seconds:.1f}"]) + " |"


def timed(fn: Callable[[], tuple[Tensor, dict]]) -> tuple[Tensor, int, float]:
    start = time.perf_counter()
    x, info = fn()
    return x, info["nfe"], time.perf_counter() - start


def independent_rows(dim: int, n: int, steps: int) -> list[str]:
    points, weights, mask, y = product_points(dim)
    gmm = GaussianMixture.isotropic(weights, points, 0.4)
    rows = []
    scorer = Scorer(gmm.condition(torch.eye(dim, dtype=F64)[mask], y[mask]).sample(3 * n, 7), n)
    for name, sampler in (("vp", "ddpm"), ("edm", "heun"), ("rectified_flow", "euler")):
        process = udm.get_process(name)
        k = steps if sampler != "heun" else steps // 2
        den = gmm.denoiser(process, "x0")
        x, nfe, sec = timed(lambda: inpaint(den, y.expand(n, dim), mask, sampler, k, seeds=range(n), dtype=F64, return_info=True))
        rows.append(scorer.row(f"independent {dim}-D", f"replacement, {name} {sampler} {k} steps", x, nfe, sec))
    masses = PointMasses(points, weights)
    point_scorer = Scorer(PointMasses(points[3:], weights[3:]).sample(3 * n, 7), n)
    process = udm.get_process("pfgmpp", D=4.0)
    den = udm.Denoiser(PointNet(masses, process), process, "x0")
    x, nfe, sec = timed(lambda: inpaint(den, y.expand(n, dim), mask, "heun", steps // 2, seeds=range(n), dtype=F64, return_info=True))
    rows.append(point_scorer.row(f"independent {dim}-D (points)", f"replacement, pfgmpp D=4 heun {steps // 2} steps", x, nfe, sec))
    return rows


def coupled_rows(dim: int, n: int, steps: int) -> list[str]:
    gmm, mask, point = coupled(dim)
    a = torch.eye(dim, dtype=F64)[mask]
    scorer = Scorer(gmm.condition(a, point[mask]).sample(3 * n, 7), n)
    process = udm.get_process("vp")
    den = gmm.denoiser(process, "x0")
    y = point.expand(n, dim)
    rows = []
    for k in (steps // 4, steps):
        x, nfe, sec = timed(lambda: inpaint(den, y, mask, "ddpm", k, seeds=range(n), dtype=F64, return_info=True))
        rows.append(scorer.row(f"coupled {dim}-D", f"replacement, vp ddpm {k} steps", x, nfe, sec))
    for sampler in ("euler", "dpmpp_2m"):
        x, nfe, sec = timed(lambda: inpaint(den, y, mask, sampler, steps // 4, seeds=range(n), dtype=F64, return_info=True))
        rows.append(scorer.row(f"coupled {dim}-D", f"replacement, vp {sampler} {steps // 4} steps", x, nfe, sec))
    for r in (1, 5, 10):
        x, nfe, sec = timed(
            lambda: inpaint(den, y, mask, "ddpm", steps // 4, seeds=range(n), dtype=F64, resample=r, jump=5, return_info=True)
        )
        rows.append(scorer.row(f"coupled {dim}-D", f"RePaint r={r} jump 5, vp ddpm {steps // 4} steps", x, nfe, sec))
    guide = PosteriorGuidance(den, a, point[mask], 0.0, data_variance=data_variance(gmm))
    for sampler in ("ddpm", "euler"):
        x, nfe, sec = timed(lambda: udm.sample(guide, sampler, steps, shape=(n, dim), seeds=range(n), dtype=F64, return_info=True))
        rows.append(scorer.row(f"coupled {dim}-D", f"guidance sigma_y=0 + variance, vp {sampler} {steps} steps", x, nfe, sec))
    return rows


def linear_rows(dim: int, n: int, steps: int) -> list[str]:
    gmm, _, point = coupled(dim)
    g = torch.Generator().manual_seed(11)
    a = torch.randn(max(1, dim // 4), dim, generator=g, dtype=F64) / math.sqrt(dim / 2)
    sigma_y = 0.3
    y = a @ point + sigma_y * torch.randn(a.shape[0], generator=g, dtype=F64)
    scorer = Scorer(gmm.condition(a, y, sigma_y).sample(3 * n, 7), n)
    rows = []
    for name, sampler in (("vp", "ddpm"), ("edm", "heun")):
        process = udm.get_process(name)
        den = gmm.denoiser(process, "x0")
        for label, variance in (("DPS 1/sigma_y^2", None), ("+ variance (PiGDM)", data_variance(gmm))):
            guide = PosteriorGuidance(den, a, y, sigma_y, data_variance=variance)
            for k in (steps // 8, steps // 2, 2 * steps):
                k = k // 2 if sampler == "heun" else k
                x, nfe, sec = timed(lambda: udm.sample(guide, sampler, k, shape=(n, dim), seeds=range(n), dtype=F64, return_info=True))
                rows.append(scorer.row(f"linear {dim}-D, sigma_y = 0.3", f"{label}, {name} {sampler} {k} steps", x, nfe, sec))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="samples per method (and exact draws per floor sample)")
    parser.add_argument("--steps", type=int, default=200, help="the fine step count (coarser rows use fractions of it)")
    parser.add_argument("--quick", action="store_true", help="n = 200, steps = 40: a smoke run")
    args = parser.parse_args()
    n, steps = (200, 40) if args.quick else (args.n, args.steps)
    torch.set_num_threads(1)
    header = "| case | method | NFE | MMD^2 | MMD^2 floor (mean ± sd) | mean err | mean floor | cov err | cov floor | s |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for rows in (independent_rows, coupled_rows, linear_rows):
        for dim in (2, 16):
            for row in rows(dim, n, steps):
                print(row, flush=True)


if __name__ == "__main__":
    main()
