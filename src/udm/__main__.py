"""``python -m udm demo``: every sampler against an exact Gaussian-mixture oracle.

Until the training issue lands a trained model, the main job shows the core on
data whose ideal denoiser is known in closed form (THEORY §10.1): for each
sampler it prints the NFE and the MMD / sliced-Wasserstein distance of its
samples to fresh data, next to the two-sample floor.
"""

from __future__ import annotations

import argparse
import sys

import torch

from . import SAMPLERS, get_process, sample
from .metrics import mmd, sliced_wasserstein
from .theory import GaussianMixture


def demo(n: int = 2000, steps: int = 20, process_name: str = "vp") -> None:
    """Print one table: sampler, NFE, MMD and sliced Wasserstein to the data, and the floors."""
    gmm = GaussianMixture.isotropic([0.4, 0.35, 0.25], [[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]], [0.4, 0.6, 0.3])
    process = get_process(process_name)
    den = gmm.denoiser(process, "eps")
    data = gmm.sample(n, 0)
    other = gmm.sample(n, 1)
    print(f"udm demo: 2-D Gaussian mixture, exact denoiser, process {process_name}, {steps} steps, {n} samples")
    print(f"{'sampler':<20}{'NFE':>6}{'MMD':>12}{'SW2':>10}")
    print(f"{'(two-sample floor)':<20}{'':>6}{float(mmd(other, data)):>12.2e}{float(sliced_wasserstein(other, data)):>10.4f}")
    for name in SAMPLERS.names():
        x, info = sample(den, name, steps=steps, shape=(n, 2), dtype=torch.float64, generator=2, return_info=True)
        print(f"{name:<20}{info['nfe']:>6}{float(mmd(x, data)):>12.2e}{float(sliced_wasserstein(x, data)):>10.4f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="udm", description="udm: unified diffusion models")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run every sampler on an exact Gaussian-mixture oracle")
    d.add_argument("--n", type=int, default=2000)
    d.add_argument("--steps", type=int, default=20)
    d.add_argument("--process", default="vp")
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo(args.n, args.steps, args.process)
    return 0


if __name__ == "__main__":
    sys.exit(main())
