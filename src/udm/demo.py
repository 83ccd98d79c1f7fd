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

``udm demo --process NAME`` runs a small CPU version of one non-Gaussian
process instead (``PROCESS_DEMOS``): the cold processes blur, fade and pool on
digits with naive and improved sampling side by side (THEORY §4.2), and the
token models mask, edit and encoder on Tiny Shakespeare (§4.3-§4.5).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import rng
from .config import load_config
from .evaluate import classifier_scores, sample_metrics
from .samplers import sample
from .training import Trainer, read_log
from .atomic import write_atomic
from .registry import Registry
from .viz import loss_curve, save_image_grid, save_text_samples, scatter_plot, trajectory_grid, trajectory_plot

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def train_and_sample(
    name: str, out: Path, steps: int | None, progress: bool, n: int, seed: int = 12345, overrides: dict | None = None
) -> tuple[Trainer, torch.Tensor, torch.Tensor]:
    """Train bundled config ``name`` (with dotted ``overrides``) in ``out/runs/name``, resuming if a finished
    run is there; return (trainer, samples, trajectory), the trajectory (steps+1, n, ...) from noise to data."""
    overrides = dict(overrides or {}) | ({} if steps is None else {"train.steps": steps})
    config = load_config(CONFIG_DIR / f"{name}.yaml", overrides)
    run = out / "runs" / name
    resume = (run / "checkpoints" / "latest").exists()
    trainer = Trainer(config, run, resume=resume, progress=progress, reuse_complete=True)
    trainer.train()
    sc = trainer.config["sample"]
    shape = (n, *trainer.train_x.shape[1:])
    x_T = trainer.process.prior(trainer.process.state_shape(shape), rng.generators_from_seeds(range(seed, seed + n)))
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


def run_demo(
    out: Path, quick: bool = False, steps: int | None = None, progress: bool = True, process: str | None = None
) -> dict[str, Any]:
    """Run the demo into ``out``; returns (and writes) the metrics.

    ``process`` names one entry of ``PROCESS_DEMOS`` (heat, green, pfgm, pfgmpp,
    cfm, reflow, blur, fade, pool, mask, edit, encoder): a small CPU version of that
    process alone, written to ``out/NAME/``. Without it, the Gaussian demo (two moons, then digits).
    """
    if process is not None:
        return PROCESS_DEMOS.get(process)(Path(out) / process, steps, progress)
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
        digits.update(classifier_scores(x))
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


# --- one small demo per non-Gaussian process (``udm demo --process NAME``) -------------------------------------

PROCESS_DEMOS: Registry[Callable[[Path, int | None, bool], dict[str, Any]]] = Registry("process demo")


def _finish(out: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=1).encode())
    print(f"wrote {out}/: metrics.json, {', '.join(sorted(p.name for p in out.iterdir() if p.is_file() and p.name != 'metrics.json'))}")
    return metrics


def cold_demo(
    config: str, out: Path, steps: int | None, progress: bool, seed: int = 12345, overrides: dict | None = None, n: int = 500
) -> dict[str, Any]:
    """Train a cold process (THEORY §4.2) on digits; naive (K0) and improved TACoS (K1) sampling from the same x_T.

    Writes ``naive_vs_improved.png`` (left block naive, right block improved,
    the same starting images) and the digits classifier's view of each sampler.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    trainer, improved, path = train_and_sample(config, out, steps, progress, n=n, seed=seed, overrides=overrides)
    sc = trainer.config["sample"]
    if sc["sampler"] != "udm_deterministic":
        raise ValueError(f"config {config!r} must sample with 'udm_deterministic' (the improved sampler), got {sc['sampler']!r}")
    x_T = path[0]
    with torch.no_grad():
        naive = sample(
            trainer.sampling_denoiser(), "udm_baseline", sc["steps"], x_T=x_T, grid=sc["grid"], seeds=range(seed, seed + len(x_T))
        )
    metrics: dict[str, Any] = {"config": config, "train_steps": trainer.step, "sampler_steps": sc["steps"]}
    grids = []
    for label, sampler, x in (("naive", "udm_baseline", naive), ("improved", "udm_deterministic", improved)):
        metrics[label] = {"sampler": sampler, **classifier_scores(x.cpu())}
        grids.append(x[:50].cpu())
        print(f"{config} {label:>8} ({sampler}): {100 * metrics[label]['confident_fraction']:.1f}% of samples labelled "
              f"with probability >= 0.9, class-histogram TV from uniform {metrics[label]['class_tv']:.3f}")
    side = torch.cat([torch.cat([g[i * 5 : i * 5 + 5] for g in grids]) for i in range(10)])
    save_image_grid(side, out / "naive_vs_improved.png", nrow=10, scale=5)
    trajectory_grid(path[:, :10], out / "trajectory.png", scale=4)
    save_image_grid(x_T[:50], out / "prior.png", nrow=10, scale=5)
    _loss_plot(trainer, out / "loss.png")
    return _finish(out, metrics)


def token_demo(config: str, out: Path, steps: int | None, progress: bool, seed: int = 12345) -> dict[str, Any]:
    """Train a token model (mask, edit or encoder) on Tiny Shakespeare; write samples and the held-out loss.

    For the ELBO-weighted mask model the held-out loss is an upper bound on
    bits per character (THEORY §4.4); otherwise it is the training objective.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    trainer, x, _ = train_and_sample(config, out, steps, progress, n=8, seed=seed)
    data = trainer.exp.train_data
    held_out = trainer.exp.test_data.x[:256].to(trainer.device)
    with torch.no_grad():
        gen = torch.Generator(device=trainer.device).manual_seed(seed)
        objective = torch.cat([trainer.exp.loss(trainer.sampling_denoiser(), held_out, generator=gen).objective for _ in range(4)])
    metrics: dict[str, Any] = {"config": config, "train_steps": trainer.step, "heldout_loss_nats": float(objective.mean())}
    if trainer.config["loss"]["weighting"] == "elbo":
        metrics["heldout_bits_per_char_bound"] = float(objective.mean()) / math.log(2)
    texts = data.decode(x)
    save_text_samples(out / "samples.txt", texts)
    _loss_plot(trainer, out / "loss.png")
    bound = metrics.get("heldout_bits_per_char_bound")
    print(f"{config}: held-out loss {metrics['heldout_loss_nats']:.3f} nats/char"
          + (f" (ELBO bound {bound:.3f} bits/char)" if bound is not None else ""))
    for text in texts[:4]:
        print(f"  {text!r}")
    return _finish(out, metrics)


def ode_demo(config: str, out: Path, steps: int | None, progress: bool, seed: int = 12345, n: int = 2000) -> dict[str, Any]:
    """Train an ODE process (THEORY §5-§8) on eight Gaussians; samples, trajectories and sliced Wasserstein vs the floor.

    The floor is the distance between two independent draws of the data of the
    same size, so a ratio near 1 means samples indistinguishable from data at this n.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    trainer, x, path = train_and_sample(config, out, steps, progress, n=n, seed=seed)
    test = trainer.exp.test_data
    metrics: dict[str, Any] = {"config": config, "process": trainer.config["process"], "train_steps": trainer.step}
    metrics.update(sample_metrics(x[: len(test)], test, trainer.exp.train_data))
    metrics.update({"sampler": trainer.config["sample"]["sampler"], "sampler_steps": trainer.config["sample"]["steps"]})
    name = trainer.process.name
    scatter_plot(x, out / "samples.png", reference=test.x[: len(x)], title=f"{name}: held-out data | samples")
    trajectory_plot(path, out / "trajectories.png", reference=test.x[: len(x)])
    _loss_plot(trainer, out / "loss.png")
    print(f"{config}: sliced Wasserstein {metrics['sliced_wasserstein']:.4f} vs floor {metrics['sliced_wasserstein_floor']:.4f} "
          f"(ratio {metrics['sliced_wasserstein_ratio']:.2f})")
    return _finish(out, metrics)


def reflow_demo(out: Path, steps: int | None, progress: bool, seed: int = 12345, n: int = 2000) -> dict[str, Any]:
    """Rectified flow (``demo_cfm``), then one reflow (``demo_reflow``: its couplings, from its weights); straightness and few-step quality.

    Both models are scored on the same prior draws: Liu et al.'s straightness
    and sliced Wasserstein to held-out eight-Gaussians data of Euler with 1, 2
    and 4 steps and of Heun with 32 steps.
    """
    from .training.reflow import straightness

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    first, _, _ = train_and_sample("demo_cfm", out, steps, progress, n=n, seed=seed)
    first_run = str(out / "runs" / "demo_cfm")
    second, _, _ = train_and_sample(
        "demo_reflow", out, steps, progress, n=n, seed=seed, overrides={"data.run": first_run, "train.init_from": first_run}
    )
    test = first.exp.test_data
    x1 = first.process.prior((n, *first.train_x.shape[1:]), rng.generators_from_seeds(range(seed, seed + n)))
    metrics: dict[str, Any] = {"train_steps": first.step}
    panels = []
    for label, trainer in (("1-rectified", first), ("2-rectified", second)):
        den = trainer.sampling_denoiser()
        row: dict[str, Any] = {"straightness": straightness(den, x1, steps=64)}
        with torch.no_grad():
            for sampler, k in (("euler", 1), ("euler", 2), ("euler", 4), ("heun", 32)):
                x = sample(den, sampler, k, x_T=x1)
                row[f"sw_{sampler}_{k}"] = sample_metrics(x[: len(test)], test, first.exp.train_data)["sliced_wasserstein"]
                if (sampler, k) == ("euler", 1):
                    panels.append(x)
        metrics[label] = row
        print(f"{label}: straightness {row['straightness']:.4f}; sliced Wasserstein, Euler 1/2/4 steps "
              f"{row['sw_euler_1']:.3f}/{row['sw_euler_2']:.3f}/{row['sw_euler_4']:.3f}, Heun 32 {row['sw_heun_32']:.3f}")
    metrics["floor"] = sample_metrics(panels[0][: len(test)], test, first.exp.train_data)["sliced_wasserstein_floor"]
    scatter_plot(panels[0], out / "one_step_1rf.png", reference=test.x[:n], title="1-rectified flow, one Euler step")
    scatter_plot(panels[1], out / "one_step_2rf.png", reference=test.x[:n], title="2-rectified flow (reflow), one Euler step")
    return _finish(out, metrics)


PROCESS_DEMOS.register("reflow", reflow_demo)

for _name, _config, _fn in (
    ("heat", "demo_heat", ode_demo),
    ("green", "demo_green", ode_demo),
    ("pfgm", "demo_pfgm", ode_demo),
    ("pfgmpp", "demo_pfgmpp", ode_demo),
    ("cfm", "demo_cfm", ode_demo),
    ("blur", "demo_blur", cold_demo),
    ("fade", "demo_fade", cold_demo),
    ("pool", "demo_pool", cold_demo),
    ("mask", "demo_text_mask", token_demo),
    ("edit", "demo_text_edit", token_demo),
    ("encoder", "demo_text_encoder", token_demo),
):
    PROCESS_DEMOS.register(_name, functools.partial(_fn, _config))
