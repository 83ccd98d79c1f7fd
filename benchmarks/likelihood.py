"""NLL of a batch of MNIST images: udm's torch-resident solver versus the score_sde way, same model, same tolerance.

The PF-ODE log-likelihood (THEORY §5.2, O3) of ``--n`` dequantized MNIST test
images, Hutchinson divergence with one Rademacher probe per image (drawn
independently per method: the bits/dim agree within their standard errors), RK45 at rtol = atol = ``--tol``:

* **score_sde way** (reimplemented here as the baseline, after
  ``likelihood.py`` of Song et al.'s score_sde): the batch and its log-density
  increments flattened into one float64 numpy vector, ``scipy.integrate.solve_ivp``
  (RK45) with one shared step and one RMS error norm over the whole vector, the
  drift evaluated by converting numpy -> torch -> numpy at every call, in the
  process time t;
* **udm**: :func:`udm.likelihood.log_likelihood`, torchdiffeq's Dormand-Prince on
  the device-resident batch, in four settings: the time variable t (as the
  baseline) or EDM's sigma~ = sigma/alpha with state x/alpha (udm's default),
  and the baseline's error norm (one RMS over the batch: the same tolerance
  semantics) or udm's default per-sample norm (every image meets the
  tolerance, which costs more steps).

The model is a checkpoint given with ``--run`` (any continuous linear-process
model trained on MNIST, e.g. ``udm train mnist_edm``); without it the script
trains a small VP model (a residual MLP, 3 blocks of 512, on flattened MNIST;
seconds per thousand steps on a CPU) under ``--out`` first, and reuses it on
later runs. A UNet works the same way but costs minutes per method on a CPU.

Prints one table: wall time, NFE, bits/dim (mean and standard error over
images) per method and the speed-up over the baseline.

CPU: ``OMP_NUM_THREADS=2 python benchmarks/likelihood.py`` ; GPU: add ``--device cuda``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from scipy.integrate import solve_ivp

from udm.config import validate
from udm.denoiser import from_x0
from udm.likelihood import bits_per_dim, dequantization_offset, dequantize, log_likelihood, prior_log_prob
from udm.training import Trainer, build_data, load_trained

#: the default model: a residual MLP on flattened MNIST with a VP process, quick to train on a CPU
MLP_VP = {
    "name": "likelihood_mnist_mlp", "seed": 0, "data": {"name": "mnist", "split": "train", "test_fraction": 0.05},
    "process": {"name": "vp"}, "prediction": {"name": "eps"}, "network": {"name": "mlp", "hidden": 512, "depth": 3},
    "train": {"batch_size": 128, "lr": 1e-3, "warmup_steps": 100, "grad_clip": 1.0, "ema": {"decay": 0.999}, "log_every": 500},
}


def score_sde_nll(denoiser, x: torch.Tensor, probe: torch.Tensor, tol: float) -> tuple[torch.Tensor, int]:
    """log p(x) the score_sde way: scipy RK45 on one flattened float64 numpy state, drift converted at every call."""
    process = denoiser.process
    shape, b = tuple(x.shape), x.shape[0]
    nfe = 0

    def ode_func(t: float, y: np.ndarray) -> np.ndarray:
        nonlocal nfe
        nfe += 1
        xt = torch.from_numpy(y[:-b]).reshape(shape).to(x.device, torch.float32).requires_grad_(True)
        with torch.enable_grad():
            drift = from_x0(denoiser(xt, t), xt, t, process, "velocity")
            (vjp,) = torch.autograd.grad((drift * probe).sum(), xt)
        div = (vjp * probe).flatten(1).sum(1)
        return np.concatenate([drift.detach().cpu().numpy().reshape(-1), div.detach().cpu().numpy()]).astype(np.float64)

    init = np.concatenate([x.cpu().numpy().reshape(-1), np.zeros(b)]).astype(np.float64)
    sol = solve_ivp(ode_func, (process.t_eps, process.t_max), init, rtol=tol, atol=tol, method="RK45")
    y = sol.y[:, -1]
    x_T = torch.from_numpy(y[:-b]).reshape(shape)
    delta = torch.from_numpy(y[-b:])
    return prior_log_prob(process, x_T) + delta, nfe


def trained_model(args: argparse.Namespace) -> str:
    """``--run``, or a small VP model on MNIST trained (once) under ``--out``."""
    if args.run:
        return args.run
    run = Path(args.out) / "run"
    if not (run / "checkpoints" / "latest").exists():
        config = validate({**MLP_VP, "train": {**MLP_VP["train"], "steps": args.train_steps, "device": args.device}})
        Trainer(config, run, progress=False).train()
    return str(run)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", help="a trained MNIST checkpoint or run folder (default: train a small VP model)")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--train-steps", type=int, default=4000)
    ap.add_argument("--out", default="benchmarks/out/likelihood")
    args = ap.parse_args()
    den, ckpt = load_trained(trained_model(args), device=args.device)
    _, test = build_data(ckpt.config)
    gen = torch.Generator(device=args.device).manual_seed(0)
    x = dequantize(test.x[: args.n].to(args.device), test.levels, gen)
    probe = 2.0 * torch.randint(0, 2, x.shape, generator=gen, device=args.device).to(x.dtype) - 1.0
    dim, offset = x[0].numel(), dequantization_offset(test.levels)
    print(f"model {ckpt.path} (process {ckpt.config['process']['name']}, step {ckpt.step}), {args.n} dequantized MNIST test "
          f"images, one Rademacher probe each, RK45 rtol = atol = {args.tol:g}, device {args.device}, torch threads {torch.get_num_threads()}\n")

    rows = []

    def timed(name: str, fn) -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        log_p, nfe = fn()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        bpd = bits_per_dim(log_p.double().cpu(), dim, offset)
        rows.append((name, time.perf_counter() - start, nfe, float(bpd.mean()), float(bpd.std()) / math.sqrt(len(bpd))))
        print(f"{name}: {rows[-1][1]:.1f} s, NFE {nfe}", flush=True)

    timed("score_sde way (scipy RK45, numpy state, t)", lambda: score_sde_nll(den, x, probe, args.tol))
    for variable, per_sample in (("t", False), ("sigma", False), ("t", True), ("sigma", True)):
        def ours(variable=variable, per_sample=per_sample):
            result = log_likelihood(den, x, probes=1, rtol=args.tol, atol=args.tol, variable=variable, per_sample=per_sample,
                                    generator=torch.Generator(device=args.device).manual_seed(0))
            return result.log_p, result.nfe
        timed(f"udm (torchdiffeq dopri5, {'per-sample' if per_sample else 'batch RMS'} norm, {variable})", ours)

    base = rows[0][1]
    print("| method | wall s | NFE | bits/dim | s.e. | speed-up |")
    print("|---|---|---|---|---|---|")
    for name, wall, nfe, bpd, se in rows:
        print(f"| {name} | {wall:.1f} | {nfe} | {bpd:.3f} | {se:.3f} | {base / wall:.1f}x |")


if __name__ == "__main__":
    main()
