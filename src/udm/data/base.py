"""The in-memory :class:`Dataset`, the ``DATASETS`` registry and :func:`load_dataset`.

Every loader returns a :class:`Dataset`: float tensors ``x`` of shape
``(N, *shape)`` with optional int64 labels. Images are ``(N, C, H, W)`` scaled
to [-1, 1] (:func:`from_uint8` maps byte 0 to -1 and 255 to +1), which is the
range the Gaussian processes' priors and the samplers' clipping assume. The
data sets this library trains on fit in memory, so there is no lazy loading:
a model sees the same tensors whatever order the batches come in.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..registry import Registry

Tensor = torch.Tensor
Loader = Callable[..., "Dataset"]
DATASETS: Registry[Loader] = Registry("dataset")

KINDS = ("points", "image")

IndexLike = Tensor | np.ndarray | Sequence[int] | Sequence[bool] | slice


@dataclass(eq=False, repr=False)
class Dataset:
    """Samples ``x`` (float, ``(N, *shape)``) with optional labels ``y`` (int64, ``(N,)``).

    ``kind`` is ``"points"`` for vectors (2-D toys, flat features) or
    ``"image"`` for ``(N, C, H, W)`` tensors in [-1, 1]. Construction checks
    the invariants every consumer relies on (floating, non-empty, finite,
    labels matching), so a bad file fails here with its name rather than as
    a NaN loss a thousand steps later. Labels without ``num_classes`` get
    ``num_classes = max(y) + 1``.
    """

    x: Tensor
    y: Tensor | None
    num_classes: int | None
    kind: str
    name: str

    def __post_init__(self) -> None:
        x = self.x
        if not isinstance(x, Tensor):
            raise TypeError(f"dataset {self.name!r}: x must be a torch.Tensor, got {type(x).__name__}")
        if self.kind not in KINDS:
            raise ValueError(f"dataset {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if not x.is_floating_point():
            raise ValueError(
                f"dataset {self.name!r}: x must be a floating tensor, got {x.dtype}; "
                "convert images with udm.data.from_uint8 and vectors with .float()"
            )
        if x.ndim < 2:
            raise ValueError(f"dataset {self.name!r}: x must have shape (N, *shape) with ndim >= 2, got {tuple(x.shape)}")
        if self.kind == "image" and x.ndim != 4:
            raise ValueError(f"dataset {self.name!r}: image data must be (N, C, H, W), got {tuple(x.shape)}")
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
        self._check_labels()

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
        return f"Dataset({self.name!r}, kind={self.kind!r}, n={len(self)}, shape={self.shape}{classes})"

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one sample, e.g. ``(2,)`` for 2-D points or ``(1, 28, 28)`` for MNIST."""
        return tuple(self.x.shape[1:])

    def subset(self, idx: IndexLike) -> Dataset:
        """The samples at ``idx`` (integer indices, a boolean mask or a slice), labels kept with them."""
        if not isinstance(idx, slice):
            idx = torch.as_tensor(np.asarray(idx) if not isinstance(idx, Tensor) else idx)
            if idx.dtype == torch.bool:
                idx = idx.nonzero().flatten()
            idx = idx.to(torch.int64).flatten()
        y = None if self.y is None else self.y[idx]
        return Dataset(self.x[idx], y, self.num_classes, self.kind, self.name)

    def split(self, test_fraction: float = 0.1, seed: int = 0) -> tuple[Dataset, Dataset]:
        """Disjoint ``(train, test)`` parts; the same ``seed`` always gives the same split.

        The test part holds ``round(test_fraction * N)`` samples (at least one,
        leaving at least one for training), drawn by a permutation from a local
        generator; both parts keep the original order of their samples.
        """
        if not 0.0 < float(test_fraction) < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        n = len(self)
        if n < 2:
            raise ValueError(f"dataset {self.name!r} has {n} sample(s); a split needs at least 2")
        n_test = min(max(1, round(float(test_fraction) * n)), n - 1)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
        test_idx, _ = perm[:n_test].sort()
        train_idx, _ = perm[n_test:].sort()
        train, test = self.subset(train_idx), self.subset(test_idx)
        train.name, test.name = f"{self.name}/train", f"{self.name}/test"
        return train, test


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
