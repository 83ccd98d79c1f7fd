"""The ``reflow`` data set: couplings (x0, x1) drawn from a trained rectified-flow run (THEORY §8.1; Liu et al. 2022).

``data: {name: reflow, run: runs/moons_rf, pairs: 4096, sampler: rk45}``
loads the run's latest checkpoint (EMA weights unless ``raw_weights``),
draws ``pairs`` prior samples x1 with seeds ``seed, seed + 1, ...``, solves
the model's ODE to get x0, and returns x0 as the data with x1 as its paired
``noise``; training on it is the reflow step that straightens the flow (see
:mod:`udm.training.reflow`). The pairs are a pure function of the checkpoint
and these options, so rebuilding the config (resume, ``udm eval``) redraws
the same pairs, as long as the run has no newer checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import DATASETS, Dataset


@DATASETS.register("reflow")
def reflow(
    run: str | Path,
    pairs: int = 4096,
    sampler: str = "rk45",
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 1024,
    raw_weights: bool = False,
    device: str | None = None,
    options: dict[str, Any] | None = None,
) -> Dataset:
    """Reflow pairs of the trained run (or checkpoint) ``run``: ``x`` = ODE endpoints x0, ``noise`` = their x1.

    ``sampler``, ``steps`` and ``options`` (e.g. ``{rtol: 1e-5}``) choose the
    ODE solver (``steps`` may be left out for ``rk45``); ``batch_size`` how
    many pairs are solved at once; ``device`` where (default CPU). The data
    set is named ``reflow(<run folder>)``; its kind (points or image) follows
    the run's data shape.
    """
    from ..training.experiment import load_trained
    from ..training.reflow import reflow_dataset

    if options is not None and not isinstance(options, dict):
        raise ValueError(f"reflow: options must be a mapping of sampler options, got {type(options).__name__}")
    denoiser, ckpt = load_trained(str(run), use_ema=not raw_weights, device=device)
    if getattr(denoiser.net, "num_classes", None) is not None:
        raise ValueError(f"reflow: the model in {ckpt.path} is class-conditional; reflow supports unconditional models only")
    shape = tuple(ckpt.meta["data"]["shape"])
    folder = ckpt.path.parent.parent if ckpt.path.parent.name == "checkpoints" else ckpt.path
    return reflow_dataset(
        denoiser, pairs, shape=shape, name=f"reflow({folder.name})", sampler=sampler, steps=steps, seed=seed,
        batch_size=batch_size, device=device, **(options or {}),
    )
