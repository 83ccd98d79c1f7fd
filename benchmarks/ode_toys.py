"""The ODE constructions of THEORY §5-§8 side by side on eight Gaussians (CPU, a few minutes).

Every row trains the same MLP for the same number of steps and samples 2000
points from the same seeds; sliced Wasserstein to 2000 held-out points is
reported beside the floor (two independent data draws, averaged over 5 draws
because one draw is noisy). Rows:

* each bundled ODE demo (heat, green, pfgm with PFGM's P2 objective, pfgmpp D = 8, cfm with a uniform prior);
* PFGM with the unbiased GF1 objective instead of P2 (same process, EDM-style x0 prediction, log-normal z);
* the Euler step sweep of PFGM++ for D in {1 (PFGM's kernel), 8, 128} against EDM (D -> inf):
  THEORY §7.4 claims that small D is more robust to large steps.

Run: ``python benchmarks/ode_toys.py`` (``--steps`` to change the training budget).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch

import udm
from udm.cli import CONFIG_DIR
from udm.config import load_config
from udm.metrics import sliced_wasserstein
from udm.theory import GaussianMixture
from udm.training import Trainer

N = 2000


def eight_gaussians() -> GaussianMixture:
    means = [[math.sqrt(2) * math.cos(k * math.pi / 4), math.sqrt(2) * math.sin(k * math.pi / 4)] for k in range(8)]
    return GaussianMixture.isotropic([1 / 8] * 8, means, 0.1)


def train(config: str, overrides: dict, out: Path) -> Trainer:
    trainer = Trainer(load_config(CONFIG_DIR / f"{config}.yaml", overrides), out, progress=False)
    trainer.train()
    return trainer


def score(trainer: Trainer, ref: torch.Tensor, sampler: str, steps: int, **options) -> tuple[float, int, float]:
    start = time.perf_counter()
    with torch.no_grad():
        x, info = udm.sample(trainer.sampling_denoiser(), sampler, steps, shape=(N, 2), seeds=range(N), return_info=True, **options)
    return float(sliced_wasserstein(x.double(), ref)), info["nfe"], time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3000)
    args = ap.parse_args()
    gmm = eight_gaussians()
    ref = gmm.sample(N, torch.Generator().manual_seed(100))
    floor = sum(float(sliced_wasserstein(gmm.sample(N, torch.Generator().manual_seed(200 + k)), ref)) for k in range(5)) / 5
    base = {"train.steps": args.steps, "train.log_every": args.steps}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for label, config, over, sampler, steps, options in (
            ("heat (sigma = 80 t^2), EDM loss", "demo_heat", {}, "heun", 32, {"grid": "karras"}),
            ("green, exp kernel", "demo_green", {}, "heun", 32, {"grid": "karras"}),
            ("pfgm, P1 + P2 normalized batch field", "demo_pfgm", {}, "heun", 40, {"grid": "logsnr", "variable": "log_sigma"}),
            ("pfgm, GF1 conditional target (x0 / edm)", "demo_pfgm",
             {"prediction": {"name": "edm", "sigma_data": 1.0}, "loss": {"time_sampler": {"name": "lognormal", "p_mean": -0.5, "p_std": 1.5}}},
             "heun", 40, {"grid": "logsnr", "variable": "log_sigma"}),
            ("pfgmpp D = 8", "demo_pfgmpp", {}, "heun", 32, {"grid": "karras"}),
            ("cfm, uniform prior", "demo_cfm", {}, "heun", 32, {}),
            ("cfm, Gaussian prior", "demo_cfm", {"process.noise": {"name": "gaussian"}}, "heun", 32, {}),
        ):
            t0 = time.perf_counter()
            trainer = train(config, {**base, **over}, Path(tmp) / f"run{len(runs)}")
            runs[label] = trainer
            sw, nfe, wall = score(trainer, ref, sampler, steps, **options)
            rows.append((label, sw, sw / floor, nfe, time.perf_counter() - t0, wall))
        print(f"\nsliced Wasserstein to {N} held-out points; floor {floor:.4f} (mean of 5 data draws); {args.steps} training steps\n")
        print("| model | SW | SW / floor | NFE | train s | sample s |")
        print("|---|---|---|---|---|---|")
        for label, sw, ratio, nfe, train_s, wall in rows:
            print(f"| {label} | {sw:.4f} | {ratio:.2f} | {nfe} | {train_s:.0f} | {wall:.2f} |")

        sweep = {}
        for D in (1.0, 8.0, 128.0, None):
            over = {"process": {"name": "edm"}} if D is None else {"process.D": D}
            sweep["EDM (D = inf)" if D is None else f"PFGM++ D = {D:g}"] = train("demo_pfgmpp", {**base, **over}, Path(tmp) / f"sweep{D}")
        steps_list = (2, 4, 8, 16, 32)
        print("\nEuler on the Karras grid: sliced Wasserstein / floor by number of steps (THEORY §7.4 robustness)\n")
        print("| model | " + " | ".join(f"{k} steps" for k in steps_list) + " |")
        print("|---|" + "---|" * len(steps_list))
        for label, trainer in sweep.items():
            ratios = [score(trainer, ref, "euler", k, grid="karras")[0] / floor for k in steps_list]
            print(f"| {label} | " + " | ".join(f"{r:.2f}" for r in ratios) + " |")


if __name__ == "__main__":
    main()
