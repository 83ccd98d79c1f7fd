"""Inpainting held-out MNIST digits with a trained DDPM: replacement, RePaint and posterior guidance at equal NFE (issue 17).

1. The model: the udm run ``runs/mnist_ddpm`` (``mnist_ddpm``: a DDPM eps UNet,
   linear betas over 1000 steps), trained for ``--train-steps`` steps if the run
   does not hold them yet (``interop_mnist.train``). Its raw weights are used: at
   1500 steps its EMA (decay 0.999) is still 22% random initialisation.
2. The data: the first ``--n`` digits of the MNIST test split, each observed
   through two masks: the top half (the bottom half hidden) and all but a
   centred 14 x 14 square (the square hidden).
3. The methods (:mod:`udm.conditioning`), every one with the ``ddpm`` sampler
   and about ``--nfe`` denoiser evaluations per sample, from the same seeds:
   * replacement (``inpaint``, r = 1): ``nfe`` grid steps; RePaint with r = 1 is
     this same run (no resampling happens);
   * RePaint r = 5 and r = 10: a grid of nfe / r steps, every stretch of
     ``jump`` = max(1, steps // 10) steps (a tenth of the grid) run r times;
   * posterior guidance (``PosteriorGuidance``) with the mask as the operator A
     (the observed pixels of the flattened image), sigma_y = 0 and the
     x0-posterior variance term (PiGDM weighting) with v = the per-pixel
     variance of the MNIST training images, ``nfe`` grid steps. Each of its
     steps costs two denoiser passes and one backward pass; the NFE column counts
     it as one, as benchmarks/conditioning_gmm.py does. It runs twice: over the
     whole grid, and switched on only where sigma~ = sigma/alpha <=
     ``--guide-below`` (5: t <= 566) with the plain model above. Its shift
     gamma (sigma^2/alpha) grad log p(y | x_t) differentiates through the
     network, whose x0_hat = (x - sigma eps_hat)/alpha has a Jacobian that is a
     small difference of two terms of size 1/alpha, and the network's error in
     it is multiplied by about sigma~^2 (25000 at t = 1000): over the whole grid
     x0_hat reaches 2e5 at the first step and NaN by the fifth (also at
     gamma = 0.3 and at 50 steps). Below sigma~ = 10 it ran on the first 8
     digits (bottom half; below 20 it diverged) but not on all 100 (NaN at
     t = 470); below 5 it ran on both masks (below 2: hidden RMS 0.63 and 0.94
     instead of 0.57 and 0.78).
   A row without a model fills the hidden pixels with the background (-1).
4. The scores: the RMS over the hidden pixels of the inpainted digit (clamped to
   [-1, 1]) against the true digit, the RMS over the observed pixels against the
   observation (0 for replacement: it keeps them exactly), and the accuracy of a
   scikit-learn LogisticRegression fitted on the MNIST training pixels (its
   accuracy on the clean test digits is printed) on the inpainted digits
   against the true labels.

Image grids (true, observed, then one row per method; the first 10 digits) go to
``benchmarks/out/inpainting/``.

Run: ``OMP_NUM_THREADS=1 python benchmarks/inpainting.py`` (about 10 minutes on 2
CPU cores); ``--quick`` for a smoke run. One torch thread by default: with more,
the batched ``torch.linalg.solve`` of the guidance's variance term hangs in this
torch build's MKL ("Parameter 6 was incorrect on entry to DLASWP"), and one
thread is as fast on 2 busy cores.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

import udm
from udm.conditioning import PosteriorGuidance, inpaint
from udm.sources import from_run
from udm.viz import save_image_grid

Tensor = torch.Tensor
SIZE = 28


def masks() -> dict[str, Tensor]:
    """The observed pixels (True) of each mask, shape (1, 28, 28)."""
    top = torch.zeros(1, SIZE, SIZE, dtype=torch.bool)
    top[:, : SIZE // 2] = True
    square = torch.ones(1, SIZE, SIZE, dtype=torch.bool)
    square[:, 7:21, 7:21] = False
    return {"bottom half hidden": top, "centre 14x14 hidden": square}


def classifier(train: udm.data.Dataset):
    """A multinomial LogisticRegression on the training pixels (200 lbfgs iterations, scikit-learn defaults otherwise)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(max_iter=200).fit(train.x.flatten(1).numpy(), train.y.numpy())


def accuracy(clf, x: Tensor, labels: Tensor) -> float:
    return float((clf.predict(x.flatten(1).numpy()) == labels.numpy()).mean())


def methods(
    model: torch.nn.Module, nfe: int, variance: float, guide_below: float
) -> dict[str, Callable[[Tensor, Tensor, int], tuple[Tensor, int, str]]]:
    """Each method as ``(true digits, mask, seed) -> (inpainted digits, NFE per sample, grid)``."""

    def repaint(r: int) -> Callable[[Tensor, Tensor, int], tuple[Tensor, int, str]]:
        steps = nfe // r
        jump = max(1, steps // 10)

        def run(x: Tensor, mask: Tensor, seed: int) -> tuple[Tensor, int, str]:
            with torch.no_grad():
                out, info = inpaint(model, x, mask, "ddpm", steps, resample=r, jump=jump, seeds=range(seed, seed + len(x)),
                                    return_info=True)
            return out, info["nfe"], f"{steps} steps" + (f", jump {jump}" if r > 1 else "")

        return run

    def guidance(below: float | None) -> Callable[[Tensor, Tensor, int], tuple[Tensor, int, str]]:
        process = model.process
        t_cap = math.inf if below is None else float(process.t_from_sigma_tilde(torch.tensor(below, dtype=torch.float64)))

        def run(x: Tensor, mask: Tensor, seed: int) -> tuple[Tensor, int, str]:
            a = torch.eye(mask.numel(), dtype=torch.float64)[mask.flatten()]
            guide = PosteriorGuidance(model, a, x.flatten(1)[:, mask.flatten()].double(), 0.0, data_variance=variance)

            def denoiser(x_t: Tensor, t: float) -> Tensor:
                if float(t) <= t_cap:
                    return guide(x_t, t)
                with torch.no_grad():
                    return model(x_t, t)

            out, info = udm.sample(denoiser, "ddpm", nfe, shape=x.shape, seeds=range(seed, seed + len(x)), process=process,
                                   return_info=True)
            return out, info["nfe"], f"{nfe} steps" + ("" if below is None else f", guided at t <= {t_cap:.0f}")

        return run

    guided = "posterior guidance (sigma_y=0, PiGDM variance)"
    return {"replacement (= RePaint r=1)": repaint(1), "RePaint r=5": repaint(5), "RePaint r=10": repaint(10),
            f"{guided}, whole grid": guidance(None), f"{guided}, where sigma~ <= {guide_below:g}": guidance(guide_below)}


def scores(clf, result: Tensor, x: Tensor, labels: Tensor, hidden: Tensor) -> str:
    """The table's hidden RMS, observed RMS and accuracy cells of ``result`` (clamped to [-1, 1])."""
    result = result.clamp(-1, 1)
    err = (result - x).pow(2)
    return f"{float(err[hidden].mean().sqrt()):.3f} | {float(err[~hidden].mean().sqrt()):.3f} | {accuracy(clf, result, labels):.2f}"


def main() -> None:
    from interop_mnist import train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/mnist_ddpm", help="the udm mnist_ddpm run (trained here if it holds fewer steps)")
    parser.add_argument("--train-steps", type=int, default=1500, help="training steps of the run")
    parser.add_argument("--n", type=int, default=100, help="held-out digits (the first n of the test split)")
    parser.add_argument("--nfe", type=int, default=100, help="denoiser evaluations per sample of every method")
    parser.add_argument("--guide-below", type=float, default=5.0, help="posterior guidance only where sigma/alpha <= this")
    parser.add_argument("--seed", type=int, default=0, help="sample i uses seed + i")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (see the module docstring)")
    parser.add_argument("--out", default="benchmarks/out/inpainting", help="folder of the image grids")
    parser.add_argument("--quick", action="store_true", help="smoke run: 8 digits, NFE 20")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n, nfe = (8, 20) if args.quick else (args.n, args.nfe)
    t0 = time.perf_counter()
    steps = train(Path(args.run), args.train_steps)
    model = from_run(args.run, use_ema=False).model
    test = udm.data.load_dataset("mnist", split="test")
    train_data = udm.data.load_dataset("mnist", split="train")
    clf = classifier(train_data)
    variance = float(train_data.x.var(0).mean())
    x, labels = test.x[:n], test.y[:n]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    setup_s = time.perf_counter() - t0
    rows = []
    for mask_name, mask in masks().items():
        hidden = ~mask.expand_as(x)
        grid = [x[:10], torch.where(hidden, 0.0, x)[:10]]
        rows.append(f"| {mask_name} | observed pixels only (hidden = background) | 0 | | "
                    f"{scores(clf, torch.where(hidden, -1.0, x), x, labels, hidden)} | 0 |")
        for name, run in methods(model, nfe, variance, args.guide_below).items():
            t1 = time.perf_counter()
            try:
                result, used, grid_text = run(x, mask, args.seed)
            except FloatingPointError as err:
                rows.append(f"| {mask_name} | {name} | {nfe} | diverged: {str(err).split(';')[0]} | | | | {time.perf_counter() - t1:.0f} |")
                continue
            rows.append(f"| {mask_name} | {name} | {used} | {grid_text} | {scores(clf, result, x, labels, hidden)} | "
                        f"{time.perf_counter() - t1:.0f} |")
            grid.append(result[:10].clamp(-1, 1))
        save_image_grid(torch.cat(grid), out / f"{mask_name.split()[0]}.png", nrow=10, scale=2)

    print(f"model: {args.run} (mnist_ddpm, {steps} training steps, raw weights); {n} MNIST test digits (the first), seeds "
          f"{args.seed}..{args.seed + n - 1}; ddpm sampler; torch {torch.__version__}, {args.threads} thread(s), "
          f"{platform.processor() or platform.machine()}; setup {setup_s:.0f} s")
    print(f"classifier: LogisticRegression on the {len(train_data)} MNIST training images; clean accuracy "
          f"{accuracy(clf, test.x, test.y):.3f} on the 10000 test digits, {accuracy(clf, x, labels):.3f} on these {n}; "
          f"PiGDM v = {variance:.3f}")
    print()
    print("| mask | method | NFE | grid | hidden RMS | observed RMS | accuracy | s |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; grids in {out}")


if __name__ == "__main__":
    main()
