"""Score a trained model against held-out data, next to the floor two real samples reach (THEORY §10.3, §4.4).

A distance between n generated samples and n held-out points means little on
its own: two independent real samples of size n are not at distance 0. So
every distance is reported beside its *floor*, the same distance between n
training points (disjoint from the held-out ones) and the same n held-out
points. A model is as good as the data allows when its distance is within a
small factor of the floor. One subset of training points gives a noisy floor
(a blurry model can score below it), so the floor is the mean over
:data:`FLOOR_REPEATS` random subsets, reported with its spread ``*_floor_std``
(the standard deviation of one subset's value; a model's own distance, from one
sample, varies about as much). MMD costs O(n^2 D) (minutes for 5000 CIFAR
images), so its floor uses one subset unless asked for more.

:func:`sample_metrics` picks the metrics that fit the data's ``kind``:

* ``points`` and ``image`` (:func:`continuous_metrics`): sliced Wasserstein and
  MMD with their floors, mean and covariance errors (THEORY §10.3);
* ``tokens`` (:func:`token_metrics`): distances between unigram and bigram
  frequencies of the samples and of held-out text (total variation, with
  floors), the share of ids outside the vocabulary, and, with the model of a
  process with an ELBO weight (the mask process), an upper bound on the
  held-out bits per token (:func:`token_nll_bound`, THEORY §4.4). Distances
  between character ids as points in R^L would mean nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from . import rng
from .data import Dataset
from .metrics import mean_cov_error, mmd, sliced_wasserstein
from .processes.base import ELBOWeighted, TokenProcess, require
from .samplers import sample

Tensor = torch.Tensor
#: Random training subsets each floor is averaged over.
FLOOR_REPEATS = 5


def _bar(progress: bool, total: int, desc: str, unit: str):
    """A tqdm bar on stderr, silent unless ``progress``."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not progress, leave=False, dynamic_ncols=True)


def draw_samples(
    denoiser: Callable[..., Tensor],
    shape: tuple[int, ...],
    n: int,
    sampler: str,
    steps: int,
    *,
    seed: int = 0,
    grid: str | Callable[[int], Tensor] | None = None,
    cond: Tensor | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    device: torch.device | str | None = None,
    batch_size: int = 4096,
    progress: bool = False,
    draw: Callable[..., tuple[Tensor, dict[str, Any]]] = sample,
    steps_run: int | None = None,
    **options: Any,
) -> tuple[Tensor, int]:
    """``n`` samples (CPU) and the NFE per sample; sample i uses seed ``seed + i`` whatever the batching.

    ``grid`` is a ``GRIDS`` name or ``steps -> times`` (e.g. a foreign model's own
    scheduler grid, :mod:`udm.interop`). ``progress`` shows a bar over the samples
    (and the sampler step within a batch) on stderr. ``draw`` is called per batch
    as :func:`udm.sample` is (the default): conditioning on observed data passes
    one that runs :func:`udm.conditioning.inpaint` or ``sdedit`` instead, and
    ``steps_run``, the steps one such draw takes (default ``steps``), for the bar.
    """
    times = grid(steps) if callable(grid) else None
    grid = None if callable(grid) else grid
    total = steps if steps_run is None else steps_run
    out, nfe = [], 0
    with _bar(progress, n, f"sampling ({sampler}, {steps} steps)", "sample") as bar:

        def step(state: dict[str, Any]) -> None:
            if callback is not None:
                callback(state)
            bar.set_postfix_str(f"step {int(state['i']) + 1}/{total}", refresh=False)

        for lo in range(0, n, batch_size):
            hi = min(n, lo + batch_size)
            with torch.no_grad():
                x, info = draw(
                    denoiser, sampler, steps, shape=(hi - lo, *shape), seeds=range(seed + lo, seed + hi), grid=grid, times=times,
                    cond=None if cond is None else cond[lo:hi], callback=step if progress else callback, device=device,
                    return_info=True, **options,
                )
            out.append(x.cpu())
            nfe = info["nfe"]
            bar.update(hi - lo)
    return torch.cat(out), nfe


def _check_sizes(n: int, test: Dataset, train: Dataset) -> None:
    if len(test) < n:
        raise ValueError(f"need at least {n} held-out points to score {n} samples, the test split has {len(test)}")
    if len(train) < n:
        raise ValueError(f"need at least {n} training points for the floor, got {len(train)}")


def _floor(metric: Callable[[Tensor, Tensor], float], train_x: Tensor, ref: Tensor, seed: int, repeats: int) -> tuple[float, float]:
    """Mean and standard deviation of ``metric(train subset, ref)`` over ``repeats`` random subsets of ``ref``'s size.

    The subsets come from one generator seeded ``seed``; the first is the single subset
    earlier versions used.
    """
    if int(repeats) != repeats or repeats < 1:
        raise ValueError(f"floor_repeats must be an integer >= 1, got {repeats!r}")
    gen = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(int(repeats)):
        subset = train_x[torch.randperm(len(train_x), generator=gen)[: len(ref)]]
        values.append(float(metric(subset, ref)))
    spread = float(torch.tensor(values, dtype=torch.float64).std()) if repeats > 1 else 0.0
    return sum(values) / len(values), spread


def continuous_metrics(
    samples: Tensor,
    test: Dataset,
    train: Dataset,
    seed: int = 0,
    *,
    floor_repeats: int = FLOOR_REPEATS,
    mmd_floor_repeats: int = 1,
) -> dict[str, float]:
    """Distances of ``samples`` to held-out points or images and their floors (THEORY §10.3).

    ``sliced_wasserstein`` and ``mmd`` are reported beside ``*_floor`` (the mean over
    ``floor_repeats``, resp. ``mmd_floor_repeats``, random sets of n training points against
    the same n held-out points; the first set is the same for both) and ``*_floor_std`` (the
    spread over those sets, 0 for one set); ``sliced_wasserstein_ratio`` is the distance over
    its floor. ``mean_error`` and ``cov_error`` compare moments.
    """
    n = samples.shape[0]
    _check_sizes(n, test, train)
    ref = test.x[:n].flatten(1).double()
    gen = samples.flatten(1).double()
    sw_floor, sw_std = _floor(lambda a, b: sliced_wasserstein(a.flatten(1).double(), b), train.x, ref, seed, floor_repeats)
    mmd_floor, mmd_std = _floor(lambda a, b: mmd(a.flatten(1).double(), b), train.x, ref, seed, mmd_floor_repeats)
    out = {
        "n": n,
        "sliced_wasserstein": float(sliced_wasserstein(gen, ref)),
        "sliced_wasserstein_floor": sw_floor,
        "sliced_wasserstein_floor_std": sw_std,
        "mmd": float(mmd(gen, ref)),
        "mmd_floor": mmd_floor,
        "mmd_floor_std": mmd_std,
        "floor_repeats": int(floor_repeats),
        "mmd_floor_repeats": int(mmd_floor_repeats),
    }
    moments = mean_cov_error(gen, ref)
    out.update({"mean_error": float(moments["mean"]), "cov_error": float(moments["cov"])})
    out["sliced_wasserstein_ratio"] = out["sliced_wasserstein"] / out["sliced_wasserstein_floor"]
    return out


def ngram_frequencies(tokens: Tensor, vocab_size: int, order: int) -> Tensor:
    """Relative frequencies of the ``order``-grams (1: single ids, 2: adjacent pairs within a row) of ids in [0, V).

    Returns a float64 vector of length V^order over the n-grams made only of valid ids
    (ids outside the vocabulary, such as an unfilled mask, are counted by
    :func:`token_metrics` separately); all zeros when there is none.
    """
    x = torch.as_tensor(tokens).to(torch.int64).reshape(tokens.shape[0], -1)
    if order < 1 or x.shape[1] < order:
        raise ValueError(f"{order}-grams need rows of at least {order} tokens, got length {x.shape[1]}")
    grams = torch.stack([x[:, i : x.shape[1] - order + 1 + i] for i in range(order)], -1).reshape(-1, order)
    valid = ((grams >= 0) & (grams < vocab_size)).all(1)
    index = (grams[valid] * (vocab_size ** torch.arange(order - 1, -1, -1))).sum(1)
    counts = torch.bincount(index, minlength=vocab_size**order).to(torch.float64)
    return counts / counts.sum().clamp_min(1.0)


def _tv(a: Tensor, b: Tensor) -> float:
    return 0.5 * float((a - b).abs().sum())


def token_metrics(
    samples: Tensor,
    test: Dataset,
    train: Dataset,
    seed: int = 0,
    *,
    model: Callable[..., Tensor] | None = None,
    floor_repeats: int = FLOOR_REPEATS,
    bound_draws: int = 4,
    batch_size: int = 256,
    progress: bool = False,
) -> dict[str, Any]:
    """Metrics for token sequences (text, token images): n-gram distances with floors, and the ELBO bound.

    * ``unigram_tv`` / ``bigram_tv``: total variation between the frequencies of single ids
      and of adjacent id pairs in the n samples and in the first n held-out sequences,
      beside ``*_floor`` (n training sequences against the same held-out ones, mean over
      ``floor_repeats`` random sets) and ``*_floor_std``;
    * ``invalid_token_fraction``: the share of sampled ids outside [0, vocab_size) (a mask
      the sampler left);
    * with ``model`` (the TokenDenoiser of a process with an ELBO weight, the mask process):
      ``nll_bound_bits_per_token`` and the rest of :func:`token_nll_bound` on the same n
      held-out sequences, an upper bound on their negative log-likelihood (THEORY §4.4).
    """
    n = samples.shape[0]
    _check_sizes(n, test, train)
    vocab = test.vocab_size
    if vocab is None:
        raise ValueError(f"token metrics need the data's vocab_size; {test.name!r} is of kind {test.kind!r}")
    gen_tokens, ref = samples.reshape(n, -1).to(torch.int64), test.x[:n].reshape(n, -1)
    out: dict[str, Any] = {"n": n, "invalid_token_fraction": float(((gen_tokens < 0) | (gen_tokens >= vocab)).double().mean())}
    for order, name in ((1, "unigram"), (2, "bigram")):
        if ref.shape[1] < order:
            continue
        target = ngram_frequencies(ref, vocab, order)
        def distance(a: Tensor, b: Tensor, order: int = order, target: Tensor = target) -> float:
            return _tv(ngram_frequencies(a, vocab, order), target)

        floor, spread = _floor(distance, train.x.reshape(len(train), -1), ref, seed, floor_repeats)
        out[f"{name}_tv"] = _tv(ngram_frequencies(gen_tokens, vocab, order), target)
        out.update({f"{name}_tv_floor": floor, f"{name}_tv_floor_std": spread, f"{name}_tv_ratio": out[f"{name}_tv"] / max(floor, 1e-300)})
    out["floor_repeats"] = int(floor_repeats)
    if model is not None and isinstance(getattr(model, "process", None), ELBOWeighted):
        out.update(token_nll_bound(model, test.x[:n], draws=bound_draws, seed=seed, batch_size=batch_size, progress=progress))
    return out


def _device(model: object) -> torch.device:
    parameters = getattr(model, "parameters", None)
    first = next(parameters(), None) if callable(parameters) else None
    return first.device if first is not None else torch.device("cpu")


def token_nll_bound(
    model: Callable[..., Tensor],
    x0: Tensor,
    *,
    draws: int = 4,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = False,
) -> dict[str, Any]:
    """An upper bound on -log2 p(x0) per token for a process with an ELBO weight (THEORY §4.4, the absorbing-process ELBO).

    For the mask process -log p(x0) / L <= E_t[w(t) sum_{masked i} -log q(x0_i | x_t)] / L with t
    uniform on the time range: w = L/t over t in {1..L} for the count schedule (exact), and
    w = m'(t)/m(t) integrated over [t_eps, t_max] for the continuous ones (the piece below
    t_eps, O(t_eps) nats per token, is left out, as in training). Each sequence gets ``draws``
    stratified times (the k-th in the k-th of ``draws`` equal slices of the range) and its own
    corruptions, all from its own generator (sequence i uses seed + i, so batching changes
    nothing). The estimate is the mean over sequences, with the standard error over them.
    With the exact conditionals the bound is the NLL itself. ``progress`` shows a bar over
    the sequences on stderr.

    Returns ``nll_bound_bits_per_token`` (bits per character for text), its ``_stderr``,
    ``nll_bound_nats_per_token``, ``nll_bound_draws`` and ``nll_bound_omits_t_below``.
    """
    from .objectives.cross_entropy import CrossEntropyLoss

    process = getattr(model, "process", None)
    if process is None:
        raise ValueError("the ELBO bound needs a model that carries its process (a TokenDenoiser); pass the run's model")
    require(process, ELBOWeighted, "the ELBO bound on the log-likelihood", "use a mask process")
    require(process, TokenProcess, "the ELBO bound on the log-likelihood")
    if int(draws) != draws or draws < 1:
        raise ValueError(f"draws must be an integer >= 1, got {draws!r}")
    loss, device = CrossEntropyLoss("elbo"), _device(model)
    x0 = torch.as_tensor(x0).to(torch.int64)
    lo, hi = float(process.t_eps), float(process.t_max)
    integer = bool(getattr(process, "integer_times", False))
    per_sequence = []
    with _bar(progress, len(x0), "ELBO bound", "sequence") as bar, torch.no_grad():
        for start in range(0, len(x0), batch_size):
            batch = x0[start : start + batch_size].to(device)
            b, total = batch.shape[0], torch.zeros(batch.shape[0], dtype=torch.float64)
            gen = rng.generators_from_seeds(range(seed + start, seed + start + b))  # sequence i: seed + i, whatever the batching
            for k in range(int(draws)):
                u = (k + rng.rand((b,), gen, dtype=torch.float64)) / draws
                t = lo + torch.floor(u * (hi - lo + 1)).clamp(max=hi - lo) if integer else lo + (hi - lo) * u
                eps = process.sample_noise(process.state_shape(batch.shape), gen, dtype=torch.float32)
                out = loss.at(model, batch, None, t.to(device), torch.ones(b, dtype=torch.float64, device=device), eps.to(device))
                total += out.objective.detach().to(torch.float64).cpu()
            per_sequence.append(total / draws * (1.0 if integer else hi - lo))
            bar.update(b)
    nats = torch.cat(per_sequence)
    stderr = float(nats.std() / math.sqrt(len(nats))) if len(nats) > 1 else 0.0
    return {
        "nll_bound_bits_per_token": float(nats.mean()) / math.log(2),
        "nll_bound_bits_per_token_stderr": stderr / math.log(2),
        "nll_bound_nats_per_token": float(nats.mean()),
        "nll_bound_draws": int(draws),
        "nll_bound_omits_t_below": 0.0 if integer else lo,
    }


def sample_metrics(
    samples: Tensor,
    test: Dataset,
    train: Dataset,
    seed: int = 0,
    *,
    model: Callable[..., Tensor] | None = None,
    floor_repeats: int = FLOOR_REPEATS,
    progress: bool = False,
) -> dict[str, Any]:
    """The metrics that fit the data's kind: :func:`token_metrics` for ``tokens``, else :func:`continuous_metrics`.

    ``model`` (optional) is the model that drew ``samples``; token data use it for the
    ELBO bound on the held-out bits per token. ``progress`` shows a bar over that bound.
    """
    if test.kind == "tokens":
        return token_metrics(samples, test, train, seed, model=model, floor_repeats=floor_repeats, progress=progress)
    return continuous_metrics(samples, test, train, seed, floor_repeats=floor_repeats)


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
