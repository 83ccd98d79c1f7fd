"""``udm demo``: the main job. Train on embedded data, then write samples, trajectories, loss curves and metrics.

Two models, both trained from scratch on data that ships with udm or its
dependencies (nothing is downloaded):

* ``demo_moons``: an MLP on the two-moons set (2-D), sampled with the
  config's sampler; the scatter, the paths from noise to data, and the
  sliced-Wasserstein distance to 2000 held-out points beside the floor (two
  independent 2000-point data samples).
* ``demo_digits``: a small UNet on scikit-learn's 8x8 digits; a sample grid,
  a trajectory grid, and how a classifier trained on real digits labels the
  samples (skipped with ``--quick``).

Everything lands in one folder, with ``metrics.json`` holding the two-moons
``sliced_wasserstein`` and ``sliced_wasserstein_floor`` at the top level.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from . import rng
from .config import load_config
from .evaluate import classifier_scores, sample_metrics
from .samplers import sample
from .training import Trainer, read_log
from .training.checkpoint import write_atomic
from .viz import loss_curve, save_image_grid, scatter_plot, trajectory_grid, trajectory_plot

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def train_and_sample(
    name: str, out: Path, steps: int | None, progress: bool, n: int, seed: int = 12345
) -> tuple[Trainer, torch.Tensor, torch.Tensor]:
    """Train bundled config ``name`` in ``out/runs/name`` (resuming if a finished run is there); return
    (trainer, samples, trajectory) where the trajectory is (steps+1, n, ...) from noise to data."""
    overrides = {} if steps is None else {"train.steps": steps}
    config = load_config(CONFIG_DIR / f"{name}.yaml", overrides)
    run = out / "runs" / name
    resume = (run / "checkpoints" / "latest").exists()
    trainer = Trainer(config, run, resume=resume, progress=progress)
    trainer.train()
    sc = trainer.config["sample"]
    shape = (n, *trainer.train_x.shape[1:])
    x_T = trainer.process.prior(shape, rng.generators_from_seeds(range(seed, seed + n)))
    path = [x_T]
    with torch.no_grad():
        x = sample(
            trainer.sampling_denoiser(), sc["sampler"], sc["steps"], x_T=x_T, grid=sc["grid"], seeds=range(seed, seed + n),
            callback=lambda state: path.append(state["x"].detach().clone()), **(sc["options"] or {}),
        )
    return trainer, x.cpu(), torch.stack(path).cpu()


def _loss_plot(trainer: Trainer, path: Path) -> None:
    rows = read_log(trainer.out / f"log.{trainer.tc['log_format']}")
    loss_curve([r["step"] for r in rows], [r["loss"] for r in rows], path)


def run_demo(out: Path, quick: bool = False, steps: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the demo into ``out``; returns (and writes) the metrics."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    trainer, x, path = train_and_sample("demo_moons", out, steps, progress, n=2000)
    metrics: dict[str, Any] = {"dataset": "two_moons", **sample_metrics(x, trainer.exp.test_data, trainer.exp.train_data)}
    metrics.update({"sampler": trainer.config["sample"]["sampler"], "sampler_steps": trainer.config["sample"]["steps"]})
    metrics["train_steps"] = trainer.step
    scatter_plot(x, out / "moons_samples.png", reference=trainer.exp.test_data.x[: len(x)], title="two moons: held-out data | samples")
    trajectory_plot(path, out / "moons_trajectories.png", reference=trainer.exp.test_data.x[: len(x)])
    _loss_plot(trainer, out / "moons_loss.png")
    print(f"two moons: sliced Wasserstein {metrics['sliced_wasserstein']:.4f} vs floor {metrics['sliced_wasserstein_floor']:.4f} "
          f"(ratio {metrics['sliced_wasserstein_ratio']:.2f})")
    if not quick:
        trainer, x, path = train_and_sample("demo_digits", out, steps, progress, n=500)
        digits = sample_metrics(x[: len(trainer.exp.test_data)], trainer.exp.test_data, trainer.exp.train_data)
        digits.update(classifier_scores(x, trainer.exp.train_data))
        digits["train_steps"] = trainer.step
        metrics["digits"] = digits
        save_image_grid(x[:100], out / "digits_samples.png", nrow=10, scale=5)
        trajectory_grid(path[:, :10], out / "digits_trajectory.png", scale=4)
        _loss_plot(trainer, out / "digits_loss.png")
        print(f"digits: {100 * digits['confident_fraction']:.1f}% of samples labelled with probability >= 0.9, "
              f"class-histogram TV from uniform {digits['class_tv']:.3f}")
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=1).encode())
    print(f"wrote {out}/: metrics.json and PNGs ({', '.join(sorted(p.name for p in out.glob('*.png')))})")
    return metrics
