"""Input conventions shared by every metric in :mod:`udm.metrics`.

Samples are tensors of shape (n, ...), flattened to (n, d); integers become the
default float dtype; a pair is promoted to the wider float dtype and must share
its device and feature dimension. Pairwise work is done in row blocks of at most
:data:`BLOCK_ELEMS` entries so that no n x m matrix is ever held.
"""

from __future__ import annotations

import torch

#: Upper bound on the number of entries of one block of pairwise distances
#: (or projected values) held at a time: 2**22 float64 numbers are 32 MiB.
BLOCK_ELEMS = 2**22

GeneratorLike = torch.Generator | int | None


def as_samples(x: torch.Tensor, name: str) -> torch.Tensor:
    """``x`` as a floating (n, d) tensor: (n, ...) is flattened, integers become the default float dtype."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(f"{name} must be 2-D (n, d), got shape {tuple(x.shape)}")
    if x.is_complex():
        raise ValueError(f"{name} must be real, got dtype {x.dtype}")
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    if x.shape[0] == 0:
        raise ValueError(f"{name} must contain at least one sample, got shape {tuple(x.shape)}")
    x = x.reshape(x.shape[0], -1)
    if x.shape[1] == 0:
        raise ValueError(f"{name} must have at least one feature, got shape {tuple(x.shape)}")
    return x


def as_pair(x: torch.Tensor, y: torch.Tensor, min_samples: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a pair of samples: same feature dimension, same device, common float dtype."""
    x = as_samples(x, "x")
    y = as_samples(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    if x.device != y.device:
        raise ValueError(f"x and y must be on the same device, got {x.device} and {y.device}")
    for name, s in (("x", x), ("y", y)):
        if s.shape[0] < min_samples:
            raise ValueError(f"{name} must have at least {min_samples} samples for this estimate, got {s.shape[0]}")
    dtype = torch.promote_types(x.dtype, y.dtype)
    return x.to(dtype), y.to(dtype)


def as_generator(generator: GeneratorLike) -> torch.Generator:
    """A torch.Generator from a generator, an integer seed, or None (seed 0, for reproducible scores)."""
    if generator is None:
        generator = 0
    if isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(generator)
    raise TypeError(f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}")


def rows_per_block(n_cols: int) -> int:
    """Rows of a block against ``n_cols`` columns that keep it within :data:`BLOCK_ELEMS` entries."""
    return max(1, BLOCK_ELEMS // max(1, n_cols))


def exact_cdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances from exact coordinate differences (no matmul expansion, no cancellation)."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")
