"""Score a trained model against held-out data, next to the floor two real samples reach (THEORY §10.3).

A distance between n generated samples and n held-out points means little on
its own: two independent real samples of size n are not at distance 0. So
every distance is reported beside its *floor*, the same distance between n
training points (disjoint from the held-out ones) and the same n held-out
points. A model is as good as the data allows when its distance is within a
small factor of the floor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .data import Dataset
from .metrics import mean_cov_error, mmd, sliced_wasserstein
from .samplers import sample


def draw_samples(
    denoiser: Callable[..., torch.Tensor],
    shape: tuple[int, ...],
    n: int,
    sampler: str,
    steps: int,
    *,
    seed: int = 0,
    grid: str | None = None,
    cond: torch.Tensor | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    device: torch.device | str | None = None,
    batch_size: int = 4096,
    **options: Any,
) -> tuple[torch.Tensor, int]:
    """``n`` samples (CPU) and the NFE per sample; sample i uses seed ``seed + i`` whatever the batching."""
    out, nfe = [], 0
    for lo in range(0, n, batch_size):
        hi = min(n, lo + batch_size)
        with torch.no_grad():
            x, info = sample(
                denoiser, sampler, steps, shape=(hi - lo, *shape), seeds=range(seed + lo, seed + hi), grid=grid,
                cond=None if cond is None else cond[lo:hi], callback=callback, device=device, return_info=True, **options,
            )
        out.append(x.cpu())
        nfe = info["nfe"]
    return torch.cat(out), nfe


def sample_metrics(samples: torch.Tensor, test: Dataset, train: Dataset, seed: int = 0) -> dict[str, float]:
    """Distances of ``samples`` to held-out data and their floors (train vs the same held-out points)."""
    n = samples.shape[0]
    if len(test) < n:
        raise ValueError(f"need at least {n} held-out points to score {n} samples, the test split has {len(test)}")
    if len(train) < n:
        raise ValueError(f"need at least {n} training points for the floor, got {len(train)}")
    ref = test.x[:n].flatten(1).double()
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]
    real = train.x[perm].flatten(1).double()
    gen = samples.flatten(1).double()
    out = {
        "n": n,
        "sliced_wasserstein": float(sliced_wasserstein(gen, ref)),
        "sliced_wasserstein_floor": float(sliced_wasserstein(real, ref)),
        "mmd": float(mmd(gen, ref)),
        "mmd_floor": float(mmd(real, ref)),
    }
    moments = mean_cov_error(gen, ref)
    out.update({"mean_error": float(moments["mean"]), "cov_error": float(moments["cov"])})
    out["sliced_wasserstein_ratio"] = out["sliced_wasserstein"] / out["sliced_wasserstein_floor"]
    return out


def classifier_scores(samples: torch.Tensor, train: Dataset, threshold: float = 0.9, seed: int = 0) -> dict[str, Any]:
    """How a classifier trained on real labelled data sees the samples (a cheap stand-in for a feature FID).

    A scikit-learn MLP classifier is fit on ``train`` (flattened pixels). Returns
    ``confident_fraction`` (share of samples whose top class probability is >=
    ``threshold``: recognisable samples), ``class_tv`` (total variation between
    the predicted-class histogram and the uniform law: coverage of all classes)
    and the histogram itself.
    """
    from sklearn.neural_network import MLPClassifier

    if train.y is None or train.num_classes is None:
        raise ValueError(f"classifier scores need labelled data; {train.name!r} has no labels")
    clf = MLPClassifier(hidden_layer_sizes=(256,), max_iter=500, random_state=seed)
    clf.fit(train.x.flatten(1).numpy(), train.y.numpy())
    prob = clf.predict_proba(samples.flatten(1).double().numpy())
    top = prob.max(1)
    counts = torch.bincount(torch.as_tensor(clf.classes_[prob.argmax(1)]), minlength=train.num_classes).double()
    hist = counts / counts.sum()
    return {
        "confident_fraction": float((top >= threshold).mean()),
        "class_tv": float(0.5 * (hist - 1.0 / train.num_classes).abs().sum()),
        "class_histogram": [round(float(h), 4) for h in hist],
        "classifier_threshold": threshold,
    }
