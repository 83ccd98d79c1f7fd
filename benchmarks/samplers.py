"""Endpoint error of udm's ODE samplers and diffusers' schedulers against the exact PF-ODE solution.

Problem (the same for every method): fixed random Gaussian mixtures in 2-D and 64-D
(8 components, random full covariances with eigenvalues log-uniform in
[0.01, 0.25], means ~ N(0, I), so the data scale is ~1), diffused by DDPM's
linear schedule (betas 1e-4..0.02, 1000 steps = udm's ``get_process("ddpm")``).
Every method starts from the same x_T at t = 1000 (diffusers' timestep 999)
and must reach clean data; the denoiser is the exact eps* of the mixture.

Reference: the PF-ODE in y = x/alpha and sigma~ = sigma/alpha, dy/dsigma~ = eps*(y, sigma~)
(THEORY §5.2), finite at sigma~ = 0, integrated by dopri5 at rtol = atol = 1e-10 in
float64 from sigma~(1000) to 0.

Error: RMS over samples and coordinates, sqrt(mean |x - x_ref|^2 / d). NFE counts
every call of the eps function (Heun: 2 per step, minus one on the final Euler step).

Run: ``python benchmarks/samplers.py`` (about 20 s on 2 CPU cores);
``--quick`` for a smoke run; ``--help`` for the options. ``--optimized`` adds
rows whose grid :func:`udm.samplers.optimize_grid` fits per (dimension, NFE) on
pilot x_T drawn with a seed disjoint from the evaluation x_T (a few minutes).
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import udm
from udm.processes.gaussian import EDMSchedule, GaussianProcess
from udm.samplers import optimize_grid
from udm.theory import GaussianMixture

Tensor = torch.Tensor
PROC = udm.get_process("ddpm")
VE = GaussianProcess(EDMSchedule(sigma_min=1e-6, sigma_max=1e4))  # y = x0 + sigma~ eps: eps* in the VE variable
SIGMA_MAX = float(PROC.sigma_tilde(PROC.t_max))


def make_gmm(dim: int, seed: int = 0, k: int = 8) -> GaussianMixture:
    """The benchmark's fixed mixture: K components, random rotations, variances log-uniform in [0.01, 0.25]."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(k, dim, generator=g, dtype=torch.float64)
    rot, _ = torch.linalg.qr(torch.randn(k, dim, dim, generator=g, dtype=torch.float64))
    lam = torch.empty(k, dim, dtype=torch.float64).uniform_(math.log(0.01), math.log(0.25), generator=g).exp()
    weights = torch.empty(k, dtype=torch.float64).uniform_(0.5, 1.5, generator=g)
    return GaussianMixture(weights, means, rot @ torch.diag_embed(lam) @ rot.transpose(1, 2))


def reference(gmm: GaussianMixture, x_T: Tensor, rtol: float) -> Tensor:
    """The exact PF-ODE endpoint: dopri5 on dy/dsigma~ = eps*(y, sigma~) from sigma~(t_max) to 0."""
    from torchdiffeq import odeint

    y0 = x_T * math.sqrt(1.0 + SIGMA_MAX**2)
    grid = torch.tensor([SIGMA_MAX, 0.0], dtype=torch.float64)
    return odeint(lambda s, y: gmm.eps(y, float(s), VE), y0, grid, rtol=rtol, atol=rtol, method="dopri5")[-1]


# ----------------------------------------------------------------------------- diffusers


def _float64_scheduler(cls: type, steps: int, **config: object) -> object:
    """A scheduler on udm's float64 DDPM tables; its own sigma grid is kept, in float64."""
    sched = cls(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", **config)
    ac = PROC.schedule.alphas_cumprod.clone()
    sched.betas, sched.alphas, sched.alphas_cumprod = PROC.schedule.betas.clone(), 1.0 - PROC.schedule.betas, ac
    if hasattr(sched, "final_alpha_cumprod"):
        sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    if hasattr(sched, "lambda_t"):
        sched.alpha_t, sched.sigma_t = ac.sqrt(), (1.0 - ac).sqrt()
        sched.lambda_t = sched.alpha_t.log() - sched.sigma_t.log()
    sched.set_timesteps(steps)
    if hasattr(sched, "sigmas") and not isinstance(sched, _diffusers().DDIMScheduler):
        sched.sigmas = sched.sigmas.to(torch.float64)
    return sched


def _diffusers():
    import diffusers

    return diffusers


def run_diffusers(
    gmm: GaussianMixture, x_T: Tensor, cls_name: str, steps: int, final_denoise: bool = False, **config: object
) -> tuple[Tensor, int]:
    """A diffusers pipeline loop with the exact eps*, evaluated at the noise level the scheduler integrates with.

    Euler/Heun/LMS work on x/alpha (start: x_T sqrt(1 + sigma~_max^2)); the others on x.
    ``final_denoise`` adds the step x0 = (x - sigma eps)/alpha from the scheduler's last
    noise level (DEIS cannot step to sigma = 0), counted as one more NFE.
    """
    d = _diffusers()
    sched = _float64_scheduler(getattr(d, cls_name), steps, **config)
    k_style = isinstance(sched, (d.EulerDiscreteScheduler, d.HeunDiscreteScheduler, d.LMSDiscreteScheduler))
    x = x_T * math.sqrt(1.0 + SIGMA_MAX**2) if k_style else x_T.clone()
    nfe = 0
    for i, k in enumerate(sched.timesteps):
        inp = sched.scale_model_input(x, k)
        if isinstance(sched, d.DDIMScheduler):
            ac = sched.alphas_cumprod[int(k)]
            sig = float(((1.0 - ac) / ac).sqrt())
        else:
            sig = float(sched.sigmas[sched.step_index if sched.step_index is not None else i])
        eps = gmm.eps(inp * math.sqrt(1.0 + sig * sig), sig, VE)
        nfe += 1
        x = sched.step(eps, k, x).prev_sample
    if final_denoise:
        sig = float(sched.sigmas[-1])
        y = x * math.sqrt(1.0 + sig * sig)
        x = y - sig * gmm.eps(y, sig, VE)
        nfe += 1
    return x, nfe


# ----------------------------------------------------------------------------- methods


@dataclass
class Method:
    """One row of the table: a name and how many steps give a target NFE."""

    name: str
    run: Callable[[GaussianMixture, Tensor, int], tuple[Tensor, int]]
    steps_for: Callable[[int], int] = lambda nfe: nfe
    tags: list[str] = field(default_factory=list)


def udm_method(
    name: str, sampler: str, grid: str = "uniform", steps_for: Callable[[int], int] = lambda n: n, **options: object
) -> Method:
    def run(gmm: GaussianMixture, x_T: Tensor, steps: int) -> tuple[Tensor, int]:
        den = gmm.denoiser(PROC, "eps")
        out, info = udm.sample(
            den, sampler=sampler, steps=steps, grid=grid, x_T=x_T, dtype=torch.float64, return_info=True, **options
        )
        return out, info["nfe"]

    return Method(name, run, steps_for, ["udm"])


def diffusers_method(name: str, cls_name: str, steps_for: Callable[[int], int] = lambda n: n, **config: object) -> Method:
    def run(gmm: GaussianMixture, x_T: Tensor, steps: int) -> tuple[Tensor, int]:
        return run_diffusers(gmm, x_T, cls_name, steps, **config)

    return Method(name, run, steps_for, ["diffusers"])


def recipe() -> Method:
    """udm's recommended recipe, one fixed rule for every problem: UniPC-3 with UniPC's B(h) rule
    (bh1 below 10 steps, bh2 otherwise), the AB2 step into clean data, on DDIM's quadratic grid."""

    def run(gmm: GaussianMixture, x_T: Tensor, steps: int) -> tuple[Tensor, int]:
        variant = "bh1" if steps < 10 else "bh2"
        return udm_method("", "unipc", grid="quadratic", order=3, variant=variant, final_order=2).run(gmm, x_T, steps)

    return Method("udm recipe: unipc-3, bh1 if < 10 steps, final AB2 (quadratic)", run, tags=["udm", "recipe"])


@dataclass
class Pilot:
    """Where optimized grids are fitted: pilot x_T from their own seed, on mixture ``mixture_seed``.

    The pilot x_T seed differs from every evaluation seed (the benchmark draws x_T
    with mixture seed + 1), so a fitted grid is judged on noise it has not seen.
    """

    samples: int = 2048
    seed: int = 12345
    mixture_seed: int = 0
    nfe: tuple[int, ...] = (5, 10)
    grids: dict[tuple[str, int, int], Tensor] = field(default_factory=dict)
    references: dict[int, Tensor] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)


def optimized_method(name: str, sampler: str, pilot: Pilot, **options: object) -> Method:
    """``sampler`` on a grid fitted by ``optimize_grid`` to the pilot batch, once per (dimension, steps).

    Columns whose NFE is not in ``pilot.nfe`` are left empty (NaN)."""

    def run(gmm: GaussianMixture, x_T: Tensor, steps: int) -> tuple[Tensor, int]:
        if steps not in pilot.nfe:
            return torch.full_like(x_T, math.nan), steps
        d = gmm.dim
        key = (name, d, steps)
        if key not in pilot.grids:
            fit_gmm = make_gmm(d, pilot.mixture_seed)
            x_pilot = torch.randn(pilot.samples, d, generator=torch.Generator().manual_seed(pilot.seed), dtype=torch.float64)
            t0 = time.perf_counter()
            grid, info = optimize_grid(
                fit_gmm.denoiser(PROC, "eps"), sampler, steps, x_pilot,
                reference=pilot.references.get(d), return_info=True, **options,
            )
            pilot.references[d] = info["reference"]
            pilot.grids[key] = grid
            sig = ", ".join(f"{float(s):.3g}" for s in PROC.sigma_tilde(grid)[1:-1])
            pilot.log.append(
                f"# {name}, {d}-D, {steps} steps: pilot RMS {math.sqrt(info['mse_init']):.3e} (quadratic) -> "
                f"{math.sqrt(info['mse']):.3e}, {info['evals']} runs, {time.perf_counter() - t0:.0f}s; interior sigma~ [{sig}]"
            )
        den = gmm.denoiser(PROC, "eps")
        out, info = udm.sample(den, sampler=sampler, times=pilot.grids[key], x_T=x_T, dtype=torch.float64, return_info=True, **options)
        return out, info["nfe"]

    return Method(name, run, tags=["udm", "optimized"])


def optimized_methods(pilot: Pilot) -> list[Method]:
    tag = "optimized grid (pilot seeds disjoint)"
    return [
        optimized_method(f"udm unipc-3, final AB2, {tag}", "unipc", pilot, order=3, final_order=2),
        optimized_method(f"udm dpmpp_3m, final AB2, {tag}", "dpmpp_3m", pilot, final_order=2),
        # UniPC-3 with bh2 and a first-order step into clean data, the method of diffusers' UniPC-3 row:
        # how much the fitted grid gives without udm's AB2 final step
        optimized_method(f"udm unipc-3 (bh2, first-order final step), {tag}", "unipc", pilot, order=3),
    ]


def heun_steps(nfe: int) -> int:
    """Heun with n steps costs 2n - 1 evaluations (the last step into sigma = 0 is Euler): the most that fit."""
    return max((nfe + 1) // 2, 1)


def methods() -> list[Method]:
    tr = {"timestep_spacing": "trailing"}
    deis = {"steps_for": lambda n: n - 1, "final_denoise": True}
    return [
        udm_method("udm ddim (uniform)", "ddim"),
        udm_method("udm euler (uniform)", "euler"),
        udm_method("udm heun (uniform)", "heun", steps_for=heun_steps),
        udm_method("udm dpmpp_2m (uniform)", "dpmpp_2m"),
        udm_method("udm dpmpp_3m (uniform)", "dpmpp_3m"),
        udm_method("udm unipc-2 (uniform)", "unipc", order=2),
        udm_method("udm unipc-3 (uniform)", "unipc", order=3),
        udm_method("udm unipc-3, final AB2 (uniform)", "unipc", order=3, final_order=2),
        udm_method("udm dpmpp_3m, final AB2 (quadratic)", "dpmpp_3m", grid="quadratic", final_order=2),
        udm_method("udm unipc-3 (quadratic)", "unipc", grid="quadratic", order=3),
        udm_method("udm unipc-3, final AB2 (quadratic)", "unipc", grid="quadratic", order=3, final_order=2),
        recipe(),
        diffusers_method("diffusers DDIM", "DDIMScheduler", clip_sample=False, set_alpha_to_one=True, **tr),
        diffusers_method("diffusers DPM++ 2M", "DPMSolverMultistepScheduler", solver_order=2, final_sigmas_type="zero", **tr),
        diffusers_method("diffusers DPM++ 3M", "DPMSolverMultistepScheduler", solver_order=3, final_sigmas_type="zero", **tr),
        diffusers_method("diffusers DPM++ 2M, Lu lambdas", "DPMSolverMultistepScheduler", solver_order=2, use_lu_lambdas=True),
        diffusers_method("diffusers DPM++ 3M, Lu lambdas", "DPMSolverMultistepScheduler", solver_order=3, use_lu_lambdas=True),
        diffusers_method("diffusers DPM++ 3M, Karras", "DPMSolverMultistepScheduler", solver_order=3, use_karras_sigmas=True),
        diffusers_method("diffusers UniPC-2 (bh2)", "UniPCMultistepScheduler", solver_order=2, **tr),
        diffusers_method("diffusers UniPC-3 (bh2)", "UniPCMultistepScheduler", solver_order=3, **tr),
        diffusers_method("diffusers UniPC-3, Karras", "UniPCMultistepScheduler", solver_order=3, use_karras_sigmas=True),
        diffusers_method(
            "diffusers UniPC-3 (bh1) + denoise", "UniPCMultistepScheduler", steps_for=lambda n: n - 1, final_denoise=True,
            solver_order=3, solver_type="bh1", final_sigmas_type="sigma_min", **tr,
        ),
        diffusers_method("diffusers DEIS-2 + denoise", "DEISMultistepScheduler", solver_order=2, **deis, **tr),
        diffusers_method("diffusers DEIS-3 + denoise", "DEISMultistepScheduler", solver_order=3, **deis, **tr),
        diffusers_method("diffusers Euler", "EulerDiscreteScheduler", **tr),
        diffusers_method("diffusers Heun", "HeunDiscreteScheduler", steps_for=heun_steps, **tr),
        diffusers_method("diffusers LMS", "LMSDiscreteScheduler", **tr),
    ]


# ----------------------------------------------------------------------------- table


def rms(a: Tensor, b: Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt())


def run(args: argparse.Namespace) -> str:
    pilot = None
    candidates = methods()
    if args.optimized:
        mixture_seed = args.seed if args.pilot_mixture_seed is None else args.pilot_mixture_seed
        pilot = Pilot(args.pilot_samples, args.pilot_seed, mixture_seed, tuple(args.opt_nfe))
        candidates += optimized_methods(pilot)
    rows = [m for m in candidates if not args.only or any(s in m.name for s in args.only)]
    cols = [(d, n) for d in args.dims for n in args.nfe]
    results: dict[str, dict[tuple[int, int], tuple[float, int]]] = {m.name: {} for m in rows}
    for d in args.dims:
        gmm = make_gmm(d, args.seed)
        x_T = torch.randn(args.samples, d, generator=torch.Generator().manual_seed(args.seed + 1), dtype=torch.float64)
        t0 = time.perf_counter()
        ref = reference(gmm, x_T, args.rtol)
        print(f"# {d}-D reference done in {time.perf_counter() - t0:.1f}s", flush=True)
        for m in rows:
            for n in args.nfe:
                out, nfe = m.run(gmm, x_T, m.steps_for(n))
                results[m.name][(d, n)] = (rms(out, ref), nfe)
        if pilot is not None:
            print("\n".join(pilot.log), flush=True)
            pilot.log.clear()
    header = "| method | " + " | ".join(f"{d}-D, NFE {n}" for d, n in cols) + " |"
    lines = [header, "|" + "---|" * (len(cols) + 1)]
    for m in rows:
        cells = []
        for c in cols:
            err, nfe = results[m.name][c]
            cells.append("n/a" if math.isnan(err) else f"{err:.2e}" + ("" if nfe == c[1] else f" ({nfe})"))
        lines.append(f"| {m.name} | " + " | ".join(cells) + " |")

    def best_of(keep: Callable[[Method], bool]) -> list[float]:
        return [min((e for m in rows if keep(m) and not math.isnan(e := results[m.name][c][0])), default=math.nan) for c in cols]

    def fmt(values: list[float], spec: str) -> str:
        return " | ".join("n/a" if math.isnan(v) else format(v, spec) for v in values)

    best = {tag: best_of(lambda m, tag=tag: tag in m.tags) for tag in ("udm", "diffusers")}
    fixed_grids = best_of(lambda m: "udm" in m.tags and "optimized" not in m.tags)
    tuned = best_of(lambda m: "optimized" in m.tags)
    for tag in ("udm", "diffusers"):
        lines.append(f"| best {tag} | " + fmt(best[tag], ".2e") + " |")
    lines.append("| best udm / best diffusers | " + fmt([u / v for u, v in zip(best["udm"], best["diffusers"])], ".2f") + " |")
    if any("optimized" in m.tags for m in rows):
        lines.append("| best udm, fixed grids / best diffusers | " + fmt([u / v for u, v in zip(fixed_grids, best["diffusers"])], ".2f") + " |")
        lines.append("| best udm, optimized grid / best diffusers | " + fmt([u / v for u, v in zip(tuned, best["diffusers"])], ".2f") + " |")
    fixed = [m for m in rows if "recipe" in m.tags]
    if fixed:
        ratios = [results[fixed[0].name][c][0] / v for c, v in zip(cols, best["diffusers"])]
        lines.append("| udm recipe / best diffusers | " + " | ".join(f"{r:.2f}" for r in ratios) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=1000, help="number of x_T draws (default 1000)")
    parser.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50], help="target NFEs (default 5 10 20 50)")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 64], help="data dimensions (default 2 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mixture (x_T uses seed + 1)")
    parser.add_argument("--rtol", type=float, default=1e-10, help="dopri5 tolerance of the reference (default 1e-10)")
    parser.add_argument("--only", nargs="*", help="keep only methods whose name contains one of these strings")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 64 samples, NFE 5 and 10, reference rtol 1e-7 (128 pilot x_T)"
    )
    opt = parser.add_argument_group("optimized grids (udm.samplers.optimize_grid)")
    opt.add_argument("--optimized", action="store_true", help="add rows whose grid is fitted on pilot x_T (a few minutes)")
    opt.add_argument("--pilot-samples", type=int, default=2048, help="pilot x_T draws per dimension (default 2048)")
    opt.add_argument("--pilot-seed", type=int, default=12345, help="seed of the pilot x_T (default 12345, disjoint from --seed + 1)")
    opt.add_argument(
        "--pilot-mixture-seed", type=int, default=None,
        help="fit the grids on this mixture instead of --seed's (a transfer test between mixtures)",
    )
    opt.add_argument("--opt-nfe", type=int, nargs="+", default=[5, 10], help="NFEs whose grid is fitted (default 5 10; others n/a)")
    args = parser.parse_args()
    if args.optimized and args.pilot_seed == args.seed + 1:
        parser.error(f"--pilot-seed {args.pilot_seed} is the evaluation x_T seed (--seed + 1); pick a disjoint seed")
    if args.quick:
        args.samples, args.nfe, args.rtol = 64, [5, 10], 1e-7
        args.pilot_samples = min(args.pilot_samples, 128)
    warnings.filterwarnings("ignore", module="diffusers")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    print(run(args))


if __name__ == "__main__":
    main()
