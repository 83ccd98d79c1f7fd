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
from collections.abc import Callable, Sequence
from typing import Any

import torch

from . import rng
from .data import Dataset
from .features import FeatureNetwork, load_feature_network
from .metrics import frechet_distance, frechet_stderr, kid, mean_cov_error, mmd, precision_recall, sliced_wasserstein
from .processes.base import ELBOWeighted, TokenProcess, require
from .registry import Registry
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


#: a feature metric: (reference features, compared features, seed, with standard errors) -> {row name: (value, stderr)}
FeatureMetric = Callable[[Tensor, Tensor, int, bool], dict[str, tuple[float, float | None]]]
#: Metrics on a feature network's features (``udm eval --metrics``), by name.
FEATURE_METRICS: Registry[FeatureMetric] = Registry("feature metric")
#: bootstrap resamples behind the Fréchet distance's standard error
FD_RESAMPLES = 10
#: neighbours of the k-NN manifolds behind precision and recall (Kynkäänniemi et al. 2019)
PR_NEIGHBOURS = 3
#: a sample counts as recognisable when the feature network's top class probability is at least this
CONFIDENCE = 0.9


@FEATURE_METRICS.register("fd")
def _fd(real: Tensor, other: Tensor, seed: int, stderr: bool) -> dict[str, tuple[float, float | None]]:
    """Fréchet distance between Gaussians fitted to the features (FID's formula), with a bootstrap standard error."""
    error = frechet_stderr(other, real, resamples=FD_RESAMPLES, generator=seed) if stderr else None
    return {"fd": (frechet_distance(other, real), error)}


@FEATURE_METRICS.register("kid")
def _kid(real: Tensor, other: Tensor, seed: int, stderr: bool) -> dict[str, tuple[float, float | None]]:
    """Kernel Inception Distance on all points (unbiased), with its jackknife standard error."""
    k = kid(other, real)
    return {"kid": (k.value, k.stderr)}


@FEATURE_METRICS.register("pr")
def _pr(real: Tensor, other: Tensor, seed: int, stderr: bool) -> dict[str, tuple[float, float | None]]:
    """Precision (fidelity) and recall (coverage) by k-NN manifolds, with binomial standard errors."""
    pr = precision_recall(real, other, k=PR_NEIGHBOURS)
    return {"precision": (pr.precision, pr.precision_stderr), "recall": (pr.recall, pr.recall_stderr)}


def class_scores(network: FeatureNetwork, images: Tensor, reference_labels: Tensor | None = None) -> dict[str, Any]:
    """How a pinned classifier (a feature network with logits) sees ``images``: recognisable, and in what proportions.

    ``confident_fraction`` is the share whose top class probability is at least
    :data:`CONFIDENCE`; ``class_histogram`` the predicted classes' shares;
    ``class_tv`` the total variation between that histogram and the uniform law
    (or, given ``reference_labels``, the histogram of those labels, e.g. the
    held-out set's, whose classes need not be balanced).
    """
    if network.num_classes is None:
        raise ValueError(f"feature network {network.name!r} has no class logits; use one that does (udm list)")
    prob = network.logits(images).softmax(1)
    classes = network.num_classes
    hist = torch.bincount(prob.argmax(1).cpu(), minlength=classes).double() / len(images)
    target = torch.full((classes,), 1.0 / classes, dtype=torch.float64)
    if reference_labels is not None:
        target = torch.bincount(reference_labels.cpu().long(), minlength=classes).double() / len(reference_labels)
    return {
        "confident_fraction": float((prob.max(1).values >= CONFIDENCE).double().mean()),
        "class_tv": float(0.5 * (hist - target).abs().sum()),
        "class_histogram": [round(float(h), 4) for h in hist],
        "classifier_threshold": CONFIDENCE,
    }


def classifier_scores(samples: Tensor, network: str = "digits-mlp") -> dict[str, Any]:
    """:func:`class_scores` of the pinned feature network ``network`` (default the digits classifier), TV to uniform."""
    return class_scores(load_feature_network(network), samples)


class FeatureReference:
    """The real side of the feature metrics, computed once: the reference set's features and the floor sets'.

    The reference set is the first n held-out images. The floor sets are
    ``floor_repeats`` random sets of n training images (disjoint from the
    held-out ones; drawn with ``torch.randperm`` from a generator seeded
    ``seed``). :meth:`score` then compares any number of sample sets (e.g. one
    per EMA width) with the same reference and the same floors.
    """

    def __init__(
        self, network: FeatureNetwork, test: Dataset, train: Dataset, n: int, *, seed: int = 0,
        floor_repeats: int = FLOOR_REPEATS, progress: bool = False,
    ) -> None:
        _check_sizes(n, test, train)
        if int(floor_repeats) != floor_repeats or floor_repeats < 1:
            raise ValueError(f"floor_repeats must be an integer >= 1, got {floor_repeats!r}")
        self.network, self.n, self.seed, self.test_name = network, n, seed, test.name
        gen = torch.Generator().manual_seed(seed)
        floor_sets = [torch.randperm(len(train), generator=gen)[:n] for _ in range(int(floor_repeats))]
        with _bar(progress, n * (1 + len(floor_sets)), f"reference features ({network.name})", "image") as bar:
            self.real = network.features(test.x[:n])
            bar.update(n)
            self.floors = []
            for idx in floor_sets:
                self.floors.append(network.features(train.x[idx]))
                bar.update(n)
        self.labels = test.y[:n] if test.y is not None else None
        self.classes: dict[str, Any] | None = None
        if network.num_classes is not None:
            train_scores = [class_scores(network, train.x[idx], self.labels) for idx in floor_sets]
            self.classes = {
                "floor_confident_fraction": sum(s["confident_fraction"] for s in train_scores) / len(train_scores),
                "floor_class_tv": sum(s["class_tv"] for s in train_scores) / len(train_scores),
            }
            if self.labels is not None:
                predicted = network.logits(test.x[:n]).argmax(1).cpu()
                self.classes["reference_accuracy"] = float((predicted == self.labels.cpu()).double().mean())
        self._floors: dict[str, dict[str, dict[str, float]]] = {}

    def floor(self, metric: str) -> dict[str, dict[str, float]]:
        """{row: {floor, floor_std}} of ``metric``: its mean and spread over the floor sets (computed once per metric)."""
        if metric not in self._floors:
            values: dict[str, list[float]] = {}
            for f in self.floors:
                for name, (value, _) in FEATURE_METRICS.get(metric)(self.real, f, self.seed, False).items():
                    values.setdefault(name, []).append(value)
            self._floors[metric] = {
                name: {"floor": sum(vs) / len(vs), "floor_std": float(torch.tensor(vs, dtype=torch.float64).std()) if len(vs) > 1 else 0.0}
                for name, vs in values.items()
            }
        return self._floors[metric]

    def score(self, samples: Tensor, metrics: Sequence[str] = ("fd", "kid", "pr"), *, progress: bool = False) -> dict[str, Any]:
        """Every metric of ``metrics`` on ``samples`` (n of them) beside its floor, the class scores, and the protocol.

        Returns ``{"n", "rows": {name: {value, stderr, floor, floor_std}}, "classes" (with a classifier network),
        "protocol"}``.
        """
        if samples.shape[0] != self.n:
            raise ValueError(f"the reference was built for {self.n} samples, got {samples.shape[0]}; build one for this n")
        chosen = {name: FEATURE_METRICS.get(name) for name in metrics}
        with _bar(progress, self.n, f"sample features ({self.network.name})", "image") as bar:
            fake = self.network.features(samples)
            bar.update(self.n)
        rows: dict[str, dict[str, float | None]] = {}
        for metric, fn in chosen.items():
            for name, (value, stderr) in fn(self.real, fake, self.seed, True).items():
                rows[name] = {"value": value, "stderr": stderr}
            for name, floor in self.floor(metric).items():
                rows[name].update(floor)
        out: dict[str, Any] = {"n": self.n, "rows": rows}
        if self.classes is not None:
            out["classes"] = {"samples": class_scores(self.network, samples, self.labels), **self.classes}
        out["protocol"] = {
            "features": self.network.protocol(),
            "metrics": {name: " ".join(fn.__doc__.split()) for name, fn in chosen.items()},
            "n": self.n,
            "reference": f"{self.test_name}: held-out split, first {self.n}",
            "floor": f"{len(self.floors)} random sets of {self.n} training images (torch.randperm, seed {self.seed}) "
                     "against the same reference",
            "fd_bootstrap_resamples": FD_RESAMPLES,
            "pr_neighbours": PR_NEIGHBOURS,
            "kid": "unbiased U-statistic on all points, kernel (a.b / d + 1)^3, jackknife standard error",
        }
        return out


def feature_metrics(
    samples: Tensor,
    test: Dataset,
    train: Dataset,
    network: FeatureNetwork,
    metrics: Sequence[str] = ("fd", "kid", "pr"),
    *,
    seed: int = 0,
    floor_repeats: int = FLOOR_REPEATS,
    progress: bool = False,
) -> dict[str, Any]:
    """Feature-space metrics of ``samples`` against held-out data, each beside its floor, with the whole protocol.

    Every metric in ``metrics`` (:data:`FEATURE_METRICS`) is computed on
    ``network``'s features of the samples against those of the first n held-out
    images (n = the number of samples), with a standard error; ``floor`` is the
    mean of the same metric for ``floor_repeats`` random sets of n training
    images against that reference, the value a perfect model reaches at this n,
    and ``floor_std`` its spread. With a classifier network the class scores
    (:func:`class_scores`, TV to the reference labels) are added for the
    samples and the floor sets, with the network's accuracy on the reference.
    See :class:`FeatureReference` to score several sample sets against one reference.
    """
    reference = FeatureReference(network, test, train, samples.shape[0], seed=seed, floor_repeats=floor_repeats, progress=progress)
    return reference.score(samples, metrics, progress=progress)
