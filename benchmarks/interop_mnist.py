"""udm's samplers on a diffusers folder against diffusers' own schedulers, on a trained MNIST model (issue 16).

1. A udm run on MNIST: a discrete DDPM UNet (``mnist_ddpm``, eps prediction),
   trained for a few CPU minutes (``--train-steps``; skipped when ``--run``
   already holds a checkpoint).
2. ``udm.interop.export_diffusers`` writes it as a diffusers pipeline folder,
   with diffusers' own sinusoidal time embedding (``time_embedding="positional"``)
   so that fractional timesteps (Karras sigmas) work.
3. The folder is loaded back twice: by diffusers (``UNet2DModel.from_pretrained``
   and the schedulers, what a diffusers user runs) and by udm
   (``udm.interop.load``, what ``udm sample --from`` runs). No udm weights are
   used past this point.
4. From the same x_T (``--n`` samples, seed 0), the reference endpoint is the
   same model's PF-ODE solved by dopri5 (udm ``rk45``, rtol = atol = 1e-5) from
   diffusers' timestep 999 to timestep 0, then the step into clean data that
   every method ends with.
5. At NFE 5, 10, 20: RMS endpoint error sqrt(mean (x - x_ref)^2) of udm's recipe
   (UniPC-3, bh1 below 10 steps, AB2 into clean data, quadratic grid; the rule of
   benchmarks/samplers.py) and of diffusers' DDIM, DPMSolverMultistep (2M; also
   with Karras sigmas), UniPC (bh2) and Euler (Karras sigmas), each run with
   diffusers' own loop on diffusers' own model. The last row is udm's error over
   the best diffusers error at that NFE (below 1: udm is closer to the exact
   solution).

Everything runs in float32 except the reference (float64 network copy).
Run: ``python benchmarks/interop_mnist.py`` (a few minutes on 2 CPU cores,
most of it training); ``--quick`` for a smoke run.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch

import udm
from udm.interop import export_diffusers, load

Tensor = torch.Tensor
NFES = (5, 10, 20)


def train(run: Path, steps: int) -> int:
    """Train (or resume) the udm MNIST DDPM run in ``run`` up to ``steps`` steps; returns the step it holds."""
    from udm.cli import main
    from udm.training.checkpoint import load_checkpoint

    done = load_checkpoint(str(run)).step if (run / "checkpoints").is_dir() else 0
    if done < steps:
        args = ["train", "mnist_ddpm", "--out", str(run), "--steps", str(steps), "--quiet"] + (["--resume"] if done else [])
        code = main(args)
        if code != 0:
            raise SystemExit(f"training failed with exit status {code}")
    return load_checkpoint(str(run)).step


def diffusers_loop(unet: torch.nn.Module, scheduler: object, x_T: Tensor, steps: int) -> Tensor:
    """diffusers' pipeline loop: scale the input, call the UNet, step the scheduler."""
    scheduler.set_timesteps(steps)
    x = x_T * scheduler.init_noise_sigma
    with torch.no_grad():
        for k in scheduler.timesteps:
            out = unet(scheduler.scale_model_input(x, k), k).sample
            x = scheduler.step(out, k, x).prev_sample
    return x


def diffusers_methods(folder: Path) -> dict[str, object]:
    """The diffusers schedulers compared, each built from the exported scheduler config plus its own options."""
    import diffusers

    config = diffusers.DDIMScheduler.load_config(folder / "scheduler")
    return {
        "diffusers DDIM (trailing)": diffusers.DDIMScheduler.from_config(config),
        "diffusers DPMSolverMultistep 2M": diffusers.DPMSolverMultistepScheduler.from_config(config),
        "diffusers DPMSolverMultistep 2M Karras": diffusers.DPMSolverMultistepScheduler.from_config(config, use_karras_sigmas=True),
        "diffusers UniPC bh2": diffusers.UniPCMultistepScheduler.from_config(config),
        "diffusers Euler Karras": diffusers.EulerDiscreteScheduler.from_config(config, use_karras_sigmas=True),
    }


def recipe(denoiser: torch.nn.Module, x_T: Tensor, nfe: int) -> tuple[Tensor, int]:
    """udm's recipe sampler (benchmarks/samplers.py) at ``nfe`` evaluations."""
    x, info = udm.sample(denoiser, "unipc", steps=nfe, grid="quadratic", x_T=x_T, order=3, variant="bh1" if nfe < 10 else "bh2",
                         final_order=2, return_info=True)
    return x, info["nfe"]


def rms(x: Tensor, ref: Tensor) -> float:
    return float(((x.double() - ref) ** 2).mean().sqrt())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, help="the udm run to train (if needed) and export (default runs/mnist_ddpm)")
    parser.add_argument("--train-steps", type=int, default=1500, help="training steps of the run (a few CPU minutes)")
    parser.add_argument("--n", type=int, default=32, help="samples (same x_T for every method)")
    parser.add_argument("--rtol", type=float, default=1e-5, help="dopri5 tolerance of the reference (rtol = atol)")
    parser.add_argument("--weights", choices=("raw", "ema"), default="raw",
                        help="weights to export: the EMA of a 1500-step run with decay 0.999 still averages in early, poor weights")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 training steps, 8 samples, a looser reference")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import diffusers

    run = Path(args.run or ("runs/mnist_ddpm_quick" if args.quick else "runs/mnist_ddpm"))
    steps, n, rtol = (20, 8, 1e-4) if args.quick else (args.train_steps, args.n, args.rtol)
    t0 = time.perf_counter()
    steps = train(run, steps)
    train_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        folder = export_diffusers(str(run), Path(tmp) / "pipeline", time_embedding="positional", use_ema=args.weights == "ema")
        unet = diffusers.UNet2DModel.from_pretrained(folder / "unet").eval()
        ours = load(folder)
        exact = load(folder, dtype=torch.float64)
        methods = diffusers_methods(folder)
        x_T = torch.randn(n, *ours.shape, generator=torch.Generator().manual_seed(0))
        t1 = time.perf_counter()
        with torch.no_grad():
            ref, info = udm.sample(exact.denoiser, "rk45", times=[1000.0, 1.0, 0.0], x_T=x_T.double(), dtype=torch.float64,
                                   rtol=rtol, atol=rtol, return_info=True)
        ref_s = time.perf_counter() - t1
        rows: dict[str, list[float]] = {}
        with torch.no_grad():
            rows["udm recipe: unipc-3, bh1 if < 10 steps, final AB2 (quadratic)"] = [rms(recipe(ours.denoiser, x_T, k)[0], ref) for k in NFES]
        for name, scheduler in methods.items():
            rows[name] = [rms(diffusers_loop(unet, scheduler, x_T, k), ref) for k in NFES]

    print(f"model: udm mnist_ddpm run {run} ({steps} training steps; {train_s:.0f} s of training in this call; {args.weights} weights), exported to diffusers "
          f"(positional time embedding) and loaded back; {n} samples of (1, 28, 28), seed 0")
    print(f"reference: udm rk45 (dopri5, rtol = atol = {rtol:g}, float64) from timestep 999 to 0, then x0_hat: "
          f"{info['nfe']} NFE, {ref_s:.0f} s; data scale: RMS of the reference {float(ref.pow(2).mean().sqrt()):.3f}")
    print()
    print("| RMS endpoint error vs reference | " + " | ".join(f"NFE {k}" for k in NFES) + " |")
    print("|---|" + "---|" * len(NFES))
    for name, errors in rows.items():
        print(f"| {name} | " + " | ".join(f"{e:.4f}" for e in errors) + " |")
    best = [min(errors[i] for name, errors in rows.items() if name.startswith("diffusers")) for i in range(len(NFES))]
    udm_row = next(iter(rows.values()))
    print("| udm recipe / best diffusers | " + " | ".join(f"{u / b:.2f}" for u, b in zip(udm_row, best)) + " |")
    assert all(math.isfinite(e) for errors in rows.values() for e in errors)


if __name__ == "__main__":
    main()
