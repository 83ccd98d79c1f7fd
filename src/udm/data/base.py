"""The in-memory :class:`Dataset`, the ``DATASETS`` registry and :func:`load_dataset`.

Every loader returns a :class:`Dataset`: float tensors ``x`` of shape
``(N, *shape)`` with optional int64 labels. Images are ``(N, C, H, W)`` scaled
to [-1, 1] (:func:`from_uint8` maps byte 0 to -1 and 255 to +1), which is the
range the Gaussian processes' priors and the samplers' clipping assume.
Token data for the discrete processes (characters of a text, binarized
pixels) is the third kind: int64 ids ``(N, L)`` in ``[0, vocab_size)``. The
data sets this library trains on fit in memory, so there is no lazy loading:
a model sees the same tensors whatever order the batches come in.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..registry import Registry

Tensor = torch.Tensor
Loader = Callable[..., "Dataset"]
DATASETS: Registry[Loader] = Registry("dataset")

KINDS = ("points", "image", "tokens")

IndexLike = Tensor | np.ndarray | Sequence[int] | Sequence[bool] | slice


@dataclass(eq=False, repr=False)
class Dataset:
    """Samples ``x`` (``(N, *shape)``) with optional labels ``y`` (int64, ``(N,)``).

    ``kind`` is ``"points"`` for float vectors (2-D toys, flat features),
    ``"image"`` for float ``(N, C, H, W)`` tensors in [-1, 1], or ``"tokens"``
    for int64 ids ``(N, L)`` in ``[0, vocab_size)``, the data of the discrete
    processes. Construction checks the invariants every consumer relies on
    (dtype, non-empty, finite or in range, labels matching), so a bad file
    fails here with its name rather than as a NaN loss or an index error a
    thousand steps later. Labels without ``num_classes`` get
    ``num_classes = max(y) + 1``.

    Token fields (kind ``"tokens"`` only): ``vocab_size`` (default
    ``len(vocab)`` if ``vocab`` is given, else ``max(x) + 1``); ``vocab``,
    the string each id stands for (one character per id for text), which
    :meth:`decode` uses; ``image_shape``, the ``(C, H, W)`` a row of ``L``
    tokens reshapes to for plotting token images such as binarized MNIST.

    ``levels`` (images only) is the number of evenly spaced values a pixel
    takes on [-1, 1]: 256 for 8-bit images, 17 for scikit-learn's digits; None
    when unknown. Likelihoods in bits per dimension dequantize with it
    (:func:`udm.likelihood.dequantize`).

    ``ordered`` marks sequential data whose samples must not be shuffled
    across the train/test boundary, such as consecutive windows of one text:
    :meth:`split` then holds out the last samples instead of random ones.

    ``noise`` (float kinds only) pairs each sample with a fixed noise draw of
    the same shape: row i of ``noise`` is the eps that training corrupts
    ``x[i]`` with, x_t = alpha_t x[i] + sigma_t noise[i], instead of a fresh
    eps ~ q. This is the coupling (x0, x1) of the reflow step of rectified
    flow (THEORY §8.1; Liu et al. 2022, "Flow Straight and Fast"): see
    :mod:`udm.training.reflow`. :meth:`subset` and :meth:`split` keep each
    row's noise with its sample.
    """

    x: Tensor
    y: Tensor | None
    num_classes: int | None
    kind: str
    name: str
    vocab_size: int | None = None
    vocab: list[str] | None = None
    image_shape: tuple[int, ...] | None = None
    ordered: bool = False
    noise: Tensor | None = None
    levels: int | None = None

    def __post_init__(self) -> None:
        x = self.x
        if not isinstance(x, Tensor):
            raise TypeError(f"dataset {self.name!r}: x must be a torch.Tensor, got {type(x).__name__}")
        if self.kind not in KINDS:
            raise ValueError(f"dataset {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        self.ordered = bool(self.ordered)
        if self.kind == "tokens":
            self._check_tokens()
        else:
            self._check_floats()
        self._check_labels()
        self._check_noise()

    def _check_floats(self) -> None:
        x = self.x
        for field in ("vocab_size", "vocab", "image_shape"):
            if getattr(self, field) is not None:
                raise ValueError(f"dataset {self.name!r}: {field} only applies to kind 'tokens', not {self.kind!r}")
        if not x.is_floating_point():
            raise ValueError(
                f"dataset {self.name!r}: x must be a floating tensor, got {x.dtype}; "
                "convert images with udm.data.from_uint8 and vectors with .float()"
            )
        if x.ndim < 2:
            raise ValueError(f"dataset {self.name!r}: x must have shape (N, *shape) with ndim >= 2, got {tuple(x.shape)}")
        if self.kind == "image" and x.ndim != 4:
            raise ValueError(f"dataset {self.name!r}: image data must be (N, C, H, W), got {tuple(x.shape)}")
        if self.levels is not None and (self.kind != "image" or int(self.levels) < 2):
            raise ValueError(f"dataset {self.name!r}: levels (pixel values per channel, >= 2) applies to images only, got {self.levels!r}")
        if x.shape[0] == 0 or x.numel() == 0:
            raise ValueError(f"dataset {self.name!r} is empty: x has shape {tuple(x.shape)}")
        # a finite sum proves every entry finite at the cost of one reduction; only an
        # overflowing or non-finite sum pays for the element-wise check
        if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
            finite = torch.isfinite(x).reshape(x.shape[0], -1)
            bad = int((~finite).sum())
            first = int((~finite.all(dim=1)).nonzero()[0, 0])
            raise ValueError(
                f"dataset {self.name!r} has {bad} non-finite value(s) (NaN or inf); the first is in sample {first}"
            )

    def _check_tokens(self) -> None:
        x = self.x
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise ValueError(
                f"dataset {self.name!r}: token ids must be an integer tensor, got {x.dtype}; "
                "map values to ids 0..vocab_size-1 first"
            )
        if x.ndim != 2:
            raise ValueError(f"dataset {self.name!r}: token data must be (N, L), got {tuple(x.shape)}")
        if x.numel() == 0:
            raise ValueError(f"dataset {self.name!r} is empty: x has shape {tuple(x.shape)}")
        self.x = x = x.to(torch.int64)
        if self.vocab is not None:
            if isinstance(self.vocab, str) or not all(isinstance(v, str) for v in self.vocab):
                raise ValueError(f"dataset {self.name!r}: vocab must be a sequence of strings, one per id")
            self.vocab = list(self.vocab)
            if self.vocab_size is None:
                self.vocab_size = len(self.vocab)
        if self.vocab_size is None:
            self.vocab_size = int(x.max()) + 1
        if isinstance(self.vocab_size, bool) or int(self.vocab_size) != self.vocab_size or self.vocab_size < 1:
            raise ValueError(f"dataset {self.name!r}: vocab_size must be an integer >= 1, got {self.vocab_size!r}")
        self.vocab_size = vocab_size = int(self.vocab_size)
        if self.vocab is not None and len(self.vocab) != vocab_size:
            raise ValueError(
                f"dataset {self.name!r}: vocab has {len(self.vocab)} entries but vocab_size is {vocab_size}"
            )
        out = (x < 0) | (x >= vocab_size)
        if bool(out.any()):
            i, j = (int(v) for v in out.nonzero()[0])
            raise ValueError(
                f"dataset {self.name!r}: {int(out.sum())} token id(s) outside [0, {vocab_size}); "
                f"the first is x[{i}, {j}] = {int(x[i, j])}"
            )
        if self.image_shape is not None:
            shape = tuple(self.image_shape)
            if not shape or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 1 for d in shape):
                raise ValueError(f"dataset {self.name!r}: image_shape must be positive integers, got {self.image_shape!r}")
            shape = tuple(int(d) for d in shape)
            if math.prod(shape) != x.shape[1]:
                raise ValueError(
                    f"dataset {self.name!r}: image_shape {shape} holds {math.prod(shape)} tokens "
                    f"but each sample has L = {x.shape[1]}"
                )
            self.image_shape = shape

    def _check_noise(self) -> None:
        noise = self.noise
        if noise is None:
            return
        if self.kind == "tokens":
            raise ValueError(f"dataset {self.name!r}: paired noise only applies to float data (points, image), not tokens")
        if not isinstance(noise, Tensor):
            raise TypeError(f"dataset {self.name!r}: noise must be a torch.Tensor or None, got {type(noise).__name__}")
        if not noise.is_floating_point():
            raise ValueError(f"dataset {self.name!r}: noise must be a floating tensor, got {noise.dtype}")
        if noise.shape != self.x.shape:
            raise ValueError(
                f"dataset {self.name!r}: noise must have the shape of x, {tuple(self.x.shape)} (one noise draw per "
                f"sample), got {tuple(noise.shape)}"
            )
        if not bool(torch.isfinite(noise).all()):
            first = int((~torch.isfinite(noise).reshape(noise.shape[0], -1).all(dim=1)).nonzero()[0, 0])
            raise ValueError(f"dataset {self.name!r}: noise has non-finite value(s) (NaN or inf); the first is in sample {first}")
        self.noise = noise.to(self.x.dtype)

    def _check_labels(self) -> None:
        y = self.y
        if y is None:
            if self.num_classes is not None:
                raise ValueError(f"dataset {self.name!r}: num_classes={self.num_classes} given without labels y")
            return
        if not isinstance(y, Tensor):
            raise TypeError(f"dataset {self.name!r}: y must be a torch.Tensor or None, got {type(y).__name__}")
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise ValueError(f"dataset {self.name!r}: labels y must be an integer tensor, got {y.dtype}")
        if y.ndim != 1 or y.shape[0] != self.x.shape[0]:
            raise ValueError(
                f"dataset {self.name!r}: labels y must have shape ({self.x.shape[0]},) to match x, got {tuple(y.shape)}"
            )
        self.y = y = y.to(torch.int64)
        if self.num_classes is None:
            self.num_classes = int(y.max()) + 1
        if self.num_classes < 1:
            raise ValueError(f"dataset {self.name!r}: num_classes must be >= 1, got {self.num_classes}")
        out = (y < 0) | (y >= self.num_classes)
        if bool(out.any()):
            first = int(out.nonzero()[0, 0])
            raise ValueError(
                f"dataset {self.name!r}: {int(out.sum())} label(s) outside [0, {self.num_classes}); "
                f"the first is y[{first}] = {int(y[first])}"
            )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __repr__(self) -> str:
        classes = "" if self.num_classes is None else f", num_classes={self.num_classes}"
        vocab = "" if self.vocab_size is None else f", vocab_size={self.vocab_size}"
        noise = "" if self.noise is None else ", paired noise"
        return f"Dataset({self.name!r}, kind={self.kind!r}, n={len(self)}, shape={self.shape}{vocab}{classes}{noise})"

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one sample, e.g. ``(2,)`` for 2-D points, ``(1, 28, 28)`` for MNIST, ``(L,)`` for tokens."""
        return tuple(self.x.shape[1:])

    def subset(self, idx: IndexLike) -> Dataset:
        """The samples at ``idx`` (integer indices, a boolean mask or a slice), labels, paired noise and token fields kept."""
        if not isinstance(idx, slice):
            idx = torch.as_tensor(np.asarray(idx) if not isinstance(idx, Tensor) else idx)
            if idx.dtype == torch.bool:
                idx = idx.nonzero().flatten()
            idx = idx.to(torch.int64).flatten()
        y = None if self.y is None else self.y[idx]
        noise = None if self.noise is None else self.noise[idx]
        return dataclasses.replace(self, x=self.x[idx], y=y, noise=noise)

    def split(self, test_fraction: float = 0.1, seed: int = 0) -> tuple[Dataset, Dataset]:
        """Disjoint ``(train, test)`` parts; the same ``seed`` always gives the same split.

        The test part holds ``round(test_fraction * N)`` samples (at least one,
        leaving at least one for training), drawn by a permutation from a local
        generator; both parts keep the original order of their samples.

        An ``ordered`` data set (consecutive windows of one text) is split
        without shuffling and ``seed`` is ignored: the test part is the LAST
        ``round(test_fraction * N)`` samples and the training part everything
        before them. Held-out text is then the end of the corpus, unseen in
        any training window, as in character-level language modelling (e.g.
        nanoGPT's first-90% / last-10% split of Tiny Shakespeare); a random
        split would put test windows between training windows that share
        their context.
        """
        if not 0.0 < float(test_fraction) < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        n = len(self)
        if n < 2:
            raise ValueError(f"dataset {self.name!r} has {n} sample(s); a split needs at least 2")
        n_test = min(max(1, round(float(test_fraction) * n)), n - 1)
        if self.ordered:
            train, test = self.subset(slice(0, n - n_test)), self.subset(slice(n - n_test, n))
        else:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
            test_idx, _ = perm[:n_test].sort()
            train_idx, _ = perm[n_test:].sort()
            train, test = self.subset(train_idx), self.subset(test_idx)
        train.name, test.name = f"{self.name}/train", f"{self.name}/test"
        return train, test

    def decode(self, tokens: Tensor | np.ndarray | Sequence[int] | Sequence[Sequence[int]]) -> list[str]:
        """The text of token ids: one string per row of ``tokens`` ``(N, L)``; a single row ``(L,)`` gives one string.

        Each id is replaced by its ``vocab`` entry and the entries of a row are
        joined, so ``decode(d.x[:4])`` shows four samples (or model outputs)
        as text. Needs a ``vocab``; ids outside ``[0, vocab_size)``, such as a
        mask token a sampler has not replaced, are a ValueError.
        """
        if self.vocab is None:
            raise ValueError(
                f"dataset {self.name!r} has no vocab to decode with; only text token data sets (vocab=...) can decode"
            )
        return decode(self.vocab, tokens, self.name)


def to_uint8(x: Tensor) -> Tensor:
    """Images in [-1, 1] to bytes: ``round((x + 1) * 127.5)``, clamped to [0, 255]; NaN becomes 0."""
    return ((torch.nan_to_num(x.detach().float(), nan=-1.0) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def from_uint8(x: Tensor | np.ndarray) -> Tensor:
    """Bytes 0..255 to float32 in [-1, 1] (0 -> -1, 255 -> +1); the inverse of :func:`to_uint8` on bytes."""
    x = torch.as_tensor(x)
    if x.dtype != torch.uint8:
        raise ValueError(f"from_uint8 expects a uint8 tensor, got {x.dtype}")
    return x.to(torch.float32).div_(127.5).sub_(1.0)


def loader_options(name: str) -> list[str]:
    """The keyword options the loader ``name`` accepts (its signature's parameter names)."""
    params = inspect.signature(DATASETS.get(name)).parameters.values()
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def load_dataset(name: str, **options: object) -> Dataset:
    """Load the registered data set ``name`` with ``options``; unknown options are a ValueError.

    ``load_dataset("two_moons", n=2000, seed=1)`` or
    ``load_dataset("mnist", split="test", limit=1000)``. The allowed options
    are read from the loader's signature, so a typo such as ``sed=1`` is
    reported with the list of valid ones instead of being ignored.
    """
    loader = DATASETS.get(name)
    allowed = loader_options(name)
    for key in options:
        if key not in allowed:
            raise ValueError(
                f"unknown option {key!r} for dataset {name!r}; allowed options: {', '.join(allowed) or '(none)'}"
            )
    return loader(**options)


def decode(vocab: Sequence[str], tokens: Tensor | np.ndarray | Sequence[int] | Sequence[Sequence[int]], name: str = "the data") -> list[str]:
    """The text of token ids under ``vocab`` (one string per row; see :meth:`Dataset.decode`)."""
    ids = torch.as_tensor(tokens.detach().cpu() if isinstance(tokens, Tensor) else np.asarray(tokens))
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"decode expects integer token ids, got {ids.dtype}")
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2:
        raise ValueError(f"decode expects token ids of shape (L,) or (N, L), got {tuple(ids.shape)}")
    out = (ids < 0) | (ids >= len(vocab))
    if bool(out.any()):
        i, j = (int(v) for v in out.nonzero()[0])
        raise ValueError(f"cannot decode id {int(ids[i, j])} at [{i}, {j}]: the vocab of {name!r} has ids 0..{len(vocab) - 1}")
    return ["".join(vocab[t] for t in row) for row in ids.tolist()]
