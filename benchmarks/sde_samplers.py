"""Weak error of udm's stochastic samplers and of diffusers' and k-diffusion's, at equal NFE, on exact mixture denoisers.

Problem: the fixed 2-D and 64-D Gaussian mixtures of ``benchmarks/samplers.py``
(8 components, DDPM's linear schedule, 1000 steps), with the exact denoiser.
Every method starts from the same x_T ~ N(0, I) at t = 1000 and samples the
reverse SDE (eta = 1: diffusers' sde-dpmsolver++, SA-Solver tau = 1,
k-diffusion eta = 1) down to clean data; the target is the mixture p_0 itself.

Weak error, against the exact law (not against a reference solution):

* ``mmd``: squared MMD (V-statistic, Gaussian kernel with one bandwidth per
  dimension, the median distance of an exact sample) between the N endpoints
  and N fresh exact draws; the row "two-sample floor" is the same statistic
  between five other exact samples of size N and those draws (mean), the
  value a perfect sampler gets;
* ``cov``: |Cov(endpoints) - Cov(p_0)|_F / |Cov(p_0)|_F with the exact mixture
  covariance (its floor is also printed), and the mean error in the same units.

NFE counts every denoiser call (DPM++ SDE: 2 per step, 1 on the last step).
Peers: diffusers' DPMSolverMultistepScheduler (sde-dpmsolver++, orders 2 and 3),
SASolverScheduler (tau = 1), DPMSolverSDEScheduler (needs torchsde), and
k-diffusion's ``sample_dpmpp_2m_sde``/``sample_dpmpp_3m_sde``/``sample_dpmpp_sde``
(Karras sigmas, its own Brownian tree). k-diffusion's package imports
torchvision, which has no CPU build here; its ``sampling`` module does not,
so it is loaded from the installed files with only ``utils.append_dims``
provided (``load_kdiffusion_sampling``). Missing peers are reported, not
skipped silently. ``bash scripts/setup.sh --bench`` installs torchsde and
k-diffusion (without its dependencies).

Run: ``python benchmarks/sde_samplers.py`` (a few minutes on 2 CPU cores);
``--quick`` for a smoke run; ``--help`` for the options.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import udm  # noqa: E402
from udm import rng  # noqa: E402
from udm.brownian import BrownianPath  # noqa: E402
from samplers import PROC, SIGMA_MAX, VE, _float64_scheduler, make_gmm  # noqa: E402
from udm.metrics import mmd  # noqa: E402
from udm.theory import GaussianMixture  # noqa: E402

Tensor = torch.Tensor
Run = Callable[[GaussianMixture, Tensor, int, int, 'BrownianPath | None'], tuple[Tensor, int]]


# ----------------------------------------------------------------------------- peers


def load_kdiffusion_sampling() -> tuple[types.ModuleType | None, str]:
    """k-diffusion's ``sampling`` module, or None and why not.

    ``import k_diffusion`` runs its ``__init__``, which imports torchvision; the
    sampling module itself needs only torch, scipy, torchdiffeq, torchsde, tqdm
    and ``utils.append_dims``, so it is loaded from the package's files with a
    stand-in ``k_diffusion.utils`` that holds that one function.
    """
    try:
        import k_diffusion.sampling as sampling  # noqa: PLC0415

        return sampling, "imported"
    except Exception as exc:  # noqa: BLE001 - any import failure is reported
        reason = f"import k_diffusion failed ({type(exc).__name__}: {exc})"
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return None, reason + "; k-diffusion is not installed (bash scripts/setup.sh --bench)"
    path = Path(list(spec.submodule_search_locations)[0]) / "sampling.py"
    package = types.ModuleType("k_diffusion")
    package.__path__ = [str(path.parent)]
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    sys.modules.setdefault("k_diffusion", package)
    sys.modules["k_diffusion.utils"] = utils
    try:
        mod_spec = importlib.util.spec_from_file_location("k_diffusion.sampling", path)
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001
        return None, reason + f"; loading sampling.py alone failed too ({type(exc).__name__}: {exc})"
    return module, reason.split(" (")[0] + " (torchvision); sampling.py loaded alone with utils.append_dims"


def _w(sigma_tilde: float) -> float:
    """The Brownian time w = 1/sigma~^2 of a noise level (udm.samplers.coordinates.brownian_time)."""
    return math.inf if sigma_tilde == 0 else 1.0 / (sigma_tilde * sigma_tilde)


def _path_normal(path: BrownianPath, sigma: float, sigma_next: float, like: Tensor) -> Tensor:
    """The path's standardized increment from noise level sigma to sigma_next (zeros where a step adds no noise: into clean data, or no move)."""
    if sigma_next == 0 or sigma_next == sigma:
        return torch.zeros_like(like)
    return path.normal(_w(sigma), _w(sigma_next))


def diffusers_run(cls_name: str, **config: object) -> Run:
    """A diffusers scheduler loop with the exact eps*: noise from its generator, or from ``path`` (shared mode).

    Shared mode feeds each step the standardized increment of the per-sample
    Brownian path over the step: ``variance_noise`` for DPMSolverMultistep, the
    noise draw of the step for SA-Solver (its module's ``randn_tensor``), the
    noise sampler for DPMSolverSDE (its own is a torchsde Brownian tree in sigma).
    """

    def run(gmm: GaussianMixture, x_T: Tensor, steps: int, seed: int, path: BrownianPath | None) -> tuple[Tensor, int]:
        import diffusers  # noqa: PLC0415
        from diffusers.schedulers import scheduling_sasolver  # noqa: PLC0415

        cls = getattr(diffusers, cls_name)
        k_style = cls is diffusers.DPMSolverSDEScheduler
        sched = _float64_scheduler(cls, steps, **({"noise_sampler_seed": seed} if k_style else {}), **config)
        x = x_T * math.sqrt(1.0 + SIGMA_MAX**2) if k_style else x_T.clone()
        gen = torch.Generator().manual_seed(seed)
        if path is not None and k_style:
            sched.noise_sampler = lambda s0, s1: _path_normal(path, float(s0), float(s1), x)
        original = scheduling_sasolver.randn_tensor
        if path is not None and cls is diffusers.SASolverScheduler:
            scheduling_sasolver.randn_tensor = lambda *a, **k: _path_normal(
                path, float(sched.sigmas[sched.step_index]), float(sched.sigmas[sched.step_index + 1]), x
            )
        nfe = 0
        try:
            for i, k in enumerate(sched.timesteps):
                inp = sched.scale_model_input(x, k)
                j = sched.step_index if sched.step_index is not None else i
                sig = float(sched.sigmas[j])
                eps = gmm.eps(inp * math.sqrt(1.0 + sig * sig), sig, VE)
                nfe += 1
                if k_style:
                    x = sched.step(eps, k, x).prev_sample
                elif path is not None and cls is diffusers.DPMSolverMultistepScheduler:
                    x = sched.step(eps, k, x, variance_noise=_path_normal(path, sig, float(sched.sigmas[j + 1]), x)).prev_sample
                else:
                    x = sched.step(eps, k, x, generator=gen).prev_sample
        finally:
            scheduling_sasolver.randn_tensor = original
        return x, nfe

    return run


def kdiffusion_run(sampling: types.ModuleType, fn_name: str, **options: object) -> Run:
    """k-diffusion's sampler on y = x/alpha with Karras sigmas (rho 7) from sigma~(1000) to sigma~(1), then 0 (n steps).

    Its noise: its own BrownianTreeNoiseSampler (torchsde, time sigma, one
    tree for the batch), or in shared mode the per-sample path in w = 1/sigma^2.
    """

    def run(gmm: GaussianMixture, x_T: Tensor, steps: int, seed: int, path: BrownianPath | None) -> tuple[Tensor, int]:
        sigma_min = float(PROC.sigma_tilde(1.0))  # the first DDPM timestep, where udm's karras grid ends too
        sigmas = sampling.get_sigmas_karras(steps, sigma_min, SIGMA_MAX).to(torch.float64)
        calls = [0]

        def model(y: Tensor, sigma: Tensor) -> Tensor:
            calls[0] += 1
            s = float(sigma.reshape(-1)[0])
            return y - s * gmm.eps(y, s, VE)

        if path is None:
            noise = sampling.BrownianTreeNoiseSampler(x_T, sigma_min, SIGMA_MAX, seed=seed)
        else:
            noise = lambda s0, s1: _path_normal(path, float(s0), float(s1), x_T)  # noqa: E731
        y = sampling.__dict__[fn_name](model, x_T * math.sqrt(1.0 + SIGMA_MAX**2), sigmas, disable=True, noise_sampler=noise, **options)
        return y, calls[0]

    return run


def udm_run(sampler: str, grid: str = "logsnr", **options: object) -> Run:
    """udm's sampler on the per-sample Brownian paths (``path``, or the paths its seeds give)."""

    def run(gmm: GaussianMixture, x_T: Tensor, steps: int, seed: int, path: BrownianPath | None) -> tuple[Tensor, int]:
        den = gmm.denoiser(PROC, "eps")
        if path is None:
            path = BrownianPath.from_generator(rng.generators_from_seeds(seeds_for(seed, x_T.shape[0])), x_T)
        out, info = udm.sample(den, sampler=sampler, steps=steps, grid=grid, x_T=x_T, dtype=torch.float64,
                               return_info=True, noise=path, **options)
        return out, info["nfe"]

    return run


def seeds_for(seed: int, n: int) -> list[int]:
    """The per-sample seeds of a run: sample i of every method gets the same Brownian path in shared mode."""
    return list(range(seed * 100_003, seed * 100_003 + n))


def two_calls(nfe: int) -> int:
    """Steps of a 2-evaluation-per-step sampler whose last step costs 1 that fit in ``nfe``."""
    return max((nfe + 1) // 2, 1)


@dataclass
class Method:
    name: str
    run: Run
    steps_for: Callable[[int], int] = lambda n: n
    peer: bool = False


def methods(kd: types.ModuleType | None, have_torchsde: bool) -> list[Method]:
    eta1 = {"tau_func": lambda t: 1.0}
    out = [
        Method("udm euler_maruyama (uniform)", udm_run("euler_maruyama", grid="uniform")),
        Method("udm dpmpp_2m_sde (uniform)", udm_run("dpmpp_2m_sde", grid="uniform")),
        Method("udm dpmpp_2m_sde, final AB2 (uniform)", udm_run("dpmpp_2m_sde", grid="uniform", final_order=2)),
        Method("udm dpmpp_2m_sde (quadratic)", udm_run("dpmpp_2m_sde", grid="quadratic")),
        Method("udm dpmpp_3m_sde (uniform)", udm_run("dpmpp_3m_sde", grid="uniform")),
        Method("udm dpmpp_3m_sde (quadratic)", udm_run("dpmpp_3m_sde", grid="quadratic")),
        Method("udm dpmpp_sde (quadratic)", udm_run("dpmpp_sde", grid="quadratic"), two_calls),
        Method("udm sa_solver 3/3 (uniform)", udm_run("sa_solver", grid="uniform")),
        Method("udm sa_solver 3/3, final AB2 (uniform)", udm_run("sa_solver", grid="uniform", final_order=2)),
        Method("udm sa_solver 3/3 (quadratic)", udm_run("sa_solver", grid="quadratic")),
        Method("udm euler, churn 40 (karras)", udm_run("euler", grid="karras", churn=40.0)),
        Method("diffusers SDE-DPM++ 2M", diffusers_run("DPMSolverMultistepScheduler", algorithm_type="sde-dpmsolver++",
                                                       solver_order=2, final_sigmas_type="zero"), peer=True),
        Method("diffusers SDE-DPM++ 2M, Karras", diffusers_run("DPMSolverMultistepScheduler", algorithm_type="sde-dpmsolver++",
                                                               solver_order=2, final_sigmas_type="zero", use_karras_sigmas=True), peer=True),
        Method("diffusers SDE-DPM++ 3M", diffusers_run("DPMSolverMultistepScheduler", algorithm_type="sde-dpmsolver++",
                                                       solver_order=3, final_sigmas_type="zero"), peer=True),
        Method("diffusers SA-Solver 3/3", diffusers_run("SASolverScheduler", predictor_order=3, corrector_order=3, **eta1), peer=True),
        Method("diffusers SA-Solver 2/2, Karras", diffusers_run("SASolverScheduler", predictor_order=2, corrector_order=2,
                                                                use_karras_sigmas=True, **eta1), peer=True),
    ]
    if have_torchsde:
        out.append(Method("diffusers DPMSolverSDE, Karras", diffusers_run("DPMSolverSDEScheduler", use_karras_sigmas=True), two_calls, True))
    if kd is not None:
        out += [
            Method("k-diffusion dpmpp_2m_sde (Karras)", kdiffusion_run(kd, "sample_dpmpp_2m_sde"), peer=True),
            Method("k-diffusion dpmpp_3m_sde (Karras)", kdiffusion_run(kd, "sample_dpmpp_3m_sde"), peer=True),
            Method("k-diffusion dpmpp_sde (Karras)", kdiffusion_run(kd, "sample_dpmpp_sde"), two_calls, True),
        ]
    return out


# ----------------------------------------------------------------------------- metrics


def exact_moments(gmm: GaussianMixture) -> tuple[Tensor, Tensor]:
    """Mean and covariance of the mixture: sum w (C_k + m_k m_k^T) - m m^T."""
    mean = gmm.weights @ gmm.means
    second = torch.einsum("k,kij->ij", gmm.weights, gmm.covs + torch.einsum("ki,kj->kij", gmm.means, gmm.means))
    return mean, second - torch.outer(mean, mean)


class Scorer:
    """Weak-error metrics of N endpoints against the exact mixture (module docstring)."""

    def __init__(self, gmm: GaussianMixture, n: int, seed: int) -> None:
        self.mean, self.cov = exact_moments(gmm)
        self.exact = gmm.sample(n, torch.Generator().manual_seed(seed + 7))
        self.bandwidth = float(torch.cdist(self.exact[:1000], self.exact[:1000]).median())
        others = [self(gmm.sample(n, torch.Generator().manual_seed(seed + 100 + r))) for r in range(5)]
        self.floor = {key: sum(o[key] for o in others) / len(others) for key in others[0]}

    def __call__(self, x: Tensor) -> dict[str, float]:
        if not bool(torch.isfinite(x).all()):
            return {"mmd": math.nan, "cov": math.nan, "mean": math.nan}
        c = torch.cov(x.T).reshape(self.cov.shape)
        scale = float(torch.linalg.matrix_norm(self.cov))
        return {
            "mmd": float(mmd(x, self.exact, bandwidth=self.bandwidth, unbiased=False)),
            "cov": float(torch.linalg.matrix_norm(c - self.cov)) / scale,
            "mean": float(torch.linalg.vector_norm(x.mean(0) - self.mean)) / math.sqrt(float(torch.trace(self.cov))),
        }


def coupled_errors(x: Tensor, ref: Tensor, bandwidth: float, cov: Tensor) -> dict[str, float]:
    """Weak error of ``x`` against ``ref``, the fine-step solution on the same Brownian paths (sample i with sample i).

    Coupling makes the difference of the two laws' statistics far less noisy
    than either against an independent sample: ``mmd`` is the U-statistic with
    every i = j term left out (so pairs never meet), unbiased for MMD^2 between
    the two laws; ``cov`` and ``mean`` are the differences of the two samples'
    moments, scaled as in :class:`Scorer`.
    """
    if not bool(torch.isfinite(x).all()):
        return {"mmd": math.nan, "cov": math.nan, "mean": math.nan}
    n = x.shape[0]
    g = 1.0 / (2.0 * bandwidth * bandwidth)

    def off_diagonal_mean(a: Tensor, b: Tensor) -> float:
        k = torch.exp(-g * torch.cdist(a, b).square())
        return float((k.sum() - k.diagonal().sum()) / (n * (n - 1)))

    value = off_diagonal_mean(x, x) + off_diagonal_mean(ref, ref) - 2.0 * off_diagonal_mean(x, ref)
    dc = torch.cov(x.T).reshape(cov.shape) - torch.cov(ref.T).reshape(cov.shape)
    return {
        "mmd": value,
        "cov": float(torch.linalg.matrix_norm(dc)) / float(torch.linalg.matrix_norm(cov)),
        "mean": float(torch.linalg.vector_norm((x - ref).mean(0))) / math.sqrt(float(torch.trace(cov))),
    }


# ----------------------------------------------------------------------------- table


def table(rows: list[Method], results: dict, cols: list[tuple[int, int]], key: str, floors: dict[int, float], floor_name: str) -> str:
    head = f"| {key} | " + " | ".join(f"{d}-D, NFE {n}" for d, n in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    lines.append(f"| {floor_name} | " + " | ".join(f"{floors[d]:.2e}" for d, _ in cols) + " |")
    for m in rows:
        cells = []
        for c in cols:
            score, nfe = results[m.name][c]
            cells.append("n/a" if math.isnan(score[key]) else f"{score[key]:.2e}" + ("" if nfe == c[1] else f" ({nfe})"))
        lines.append(f"| {m.name} | " + " | ".join(cells) + " |")

    def best(peer: bool) -> list[float]:
        return [min((abs(v) for m in rows if m.peer == peer and not math.isnan(v := results[m.name][c][0][key])), default=math.nan) for c in cols]

    ours, theirs = best(False), best(True)
    lines.append("| best udm | " + " | ".join(f"{v:.2e}" for v in ours) + " |")
    lines.append("| best peer | " + " | ".join(f"{v:.2e}" for v in theirs) + " |")
    lines.append("| best udm / best peer | " + " | ".join(f"{u / v:.2f}" for u, v in zip(ours, theirs)) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2048, help="endpoints per method and exact draws (default 2048)")
    parser.add_argument("--nfe", type=int, nargs="+", default=[10, 20, 50, 100], help="NFE budgets (default 10 20 50 100)")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 64], help="data dimensions (default 2 64)")
    parser.add_argument("--seed", type=int, default=0, help="mixture and x_T seed (default 0)")
    parser.add_argument("--ref-steps", type=int, default=1000, help="steps of the fine reference on the shared paths (default 1000)")
    parser.add_argument("--only", nargs="*", default=None, help="keep methods whose name contains one of these strings")
    parser.add_argument("--quick", action="store_true", help="smoke run: 256 samples, NFE 10 and 20, reference 200 steps")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.nfe, args.ref_steps = 256, [10, 20], 200
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    kd, kd_status = load_kdiffusion_sampling()
    have_torchsde = importlib.util.find_spec("torchsde") is not None
    print(f"# k-diffusion: {kd_status}")
    print(f"# torchsde: {'installed' if have_torchsde else 'not installed: diffusers DPMSolverSDE and k-diffusion rows are left out'}")
    rows = [m for m in methods(kd, have_torchsde) if not args.only or any(s in m.name for s in args.only)]
    cols = [(d, n) for d in args.dims for n in args.nfe]
    own: dict[str, dict] = {m.name: {} for m in rows}
    shared: dict[str, dict] = {m.name: {} for m in rows}
    floors: dict[str, dict[int, float]] = {"mmd": {}, "cov": {}, "mean": {}, "ref": {}}
    seed = args.seed + 11
    ref_method = udm_run("sa_solver", grid="uniform")
    for d in args.dims:
        gmm = make_gmm(d, args.seed)
        scorer = Scorer(gmm, args.samples, args.seed)
        for key in ("mmd", "cov", "mean"):
            floors[key][d] = scorer.floor[key]
        x_T = torch.randn(args.samples, d, generator=torch.Generator().manual_seed(args.seed + 1), dtype=torch.float64)
        path = BrownianPath.from_generator(rng.generators_from_seeds(seeds_for(seed, args.samples)), x_T)
        t0 = time.perf_counter()
        ref = ref_method(gmm, x_T, args.ref_steps, seed, path)[0]
        half = ref_method(gmm, x_T, args.ref_steps // 2, seed, path)[0]
        floors["ref"][d] = coupled_errors(half, ref, scorer.bandwidth, scorer.cov)["cov"]
        print(f"# {d}-D reference ({args.ref_steps} steps of udm sa_solver, uniform grid): {time.perf_counter() - t0:.1f}s", flush=True)
        for m in rows:
            t0 = time.perf_counter()
            for n in args.nfe:
                out, nfe = m.run(gmm, x_T, m.steps_for(n), seed, None)
                own[m.name][(d, n)] = (scorer(out), nfe)
                out, nfe = m.run(gmm, x_T, m.steps_for(n), seed, path)
                shared[m.name][(d, n)] = (coupled_errors(out, ref, scorer.bandwidth, scorer.cov), nfe)
            print(f"# {d}-D {m.name}: {time.perf_counter() - t0:.1f}s", flush=True)
    print("\n## Against the exact mixture, each library's own noise (floor: two exact samples)")
    for key in ("mmd", "cov", "mean"):
        print()
        print(table(rows, own, cols, key, floors[key], "two-sample floor"))
    print(f"\n## Against the {args.ref_steps}-step solution on the same per-sample Brownian paths (coupled; floor: the reference at half its steps, cov)")
    for key in ("mmd", "cov", "mean"):
        print()
        print(table(rows, shared, cols, key, floors["ref"], f"reference, {args.ref_steps // 2} vs {args.ref_steps} steps (cov)"))


if __name__ == "__main__":
    main()
