"""Average-pooling ("super-resolution") degradation for cold diffusion (THEORY §4.2, §4.6).

D_t = average-pool the image in blocks of 2^t x 2^t pixels, then nearest-upsample
back to H x W. A block at the right or bottom edge that holds fewer pixels is
averaged over the pixels it holds, so every size works. Pooling is separable
(the mean over a block is the mean over its rows of the means over its columns),
so D_t(X) = P_t X Q_t^T per channel with per-axis projectors P_t (n, n):
P_t[i, j] = 1 / |block(i)| if j lies in i's block. Each P_t is an orthogonal
projection and the levels are nested (P_s P_t = P_t for s <= t).

T defaults to ceil(log2(max(H, W))), where one block covers the whole image and
D_T(x) is the per-channel mean (the information left at the end of Su's
critique, THEORY §4.2). A smaller T stops at coarse resolution; a larger one
would only repeat the mean and is refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .cold import SeparableColdProcess

Tensor = torch.Tensor


def full_levels(height: int, width: int) -> int:
    """ceil(log2(max(H, W))): the first level whose 2^t block covers the whole image (at least 1)."""
    return max(1, math.ceil(math.log2(max(int(height), int(width)))))


def block_average_matrices(n: int, levels: int) -> Tensor:
    """[P_0 = I, ..., P_levels] (levels + 1, n, n) float64: average over blocks of 2^t along one axis."""
    idx = torch.arange(n)
    mats = []
    for t in range(levels + 1):
        block = idx // (2**t)
        same = (block[:, None] == block[None, :]).to(torch.float64)
        mats.append(same / same.sum(1, keepdim=True))
    return torch.stack(mats)


def _image_size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in hw):
        raise ValueError(f"image_size must be a positive int or (height, width), got {size!r}")
    return int(hw[0]), int(hw[1])


class PoolProcess(SeparableColdProcess):
    """Cold diffusion by block average-pooling, level t = blocks of 2^t (THEORY §4.2); see the module docstring.

    Args:
        image_size: H (square) or (H, W); with ``timesteps=None`` it sets T = ceil(log2(max(H, W))).
        timesteps: T explicitly (1 <= T <= ceil(log2(max(H, W))) of the images it is used on).
        sigma, sigma_schedule: added noise std (0 = pure cold diffusion) and its schedule (:class:`~.cold.ColdProcess`).
        prior_weights, prior_means, prior_stds, prior_noise: the generation prior (:class:`~.cold.ColdProcess`).
    """

    name = "pool"

    def __init__(
        self,
        image_size: int | Sequence[int] | None = None,
        timesteps: int | None = None,
        sigma: float = 0.0,
        *,
        sigma_schedule: str = "constant",
        prior_weights: Sequence[float] | None = None,
        prior_means: Sequence[Sequence[float]] | None = None,
        prior_stds: Sequence[Sequence[float]] | None = None,
        prior_noise: float = 1e-3,
    ) -> None:
        self.image_size = _image_size(image_size)
        if timesteps is None:
            if self.image_size is None:
                raise ValueError(
                    "PoolProcess needs image_size (T defaults to ceil(log2(max(H, W))), where D_T is the "
                    "per-channel mean) or an explicit timesteps"
                )
            timesteps = full_levels(*self.image_size)
        super().__init__(
            timesteps, sigma, sigma_schedule=sigma_schedule,
            prior_weights=prior_weights, prior_means=prior_means, prior_stds=prior_stds, prior_noise=prior_noise,
        )
        if self.image_size is not None:
            self.check_image_size(*self.image_size)

    def check_image_size(self, height: int, width: int) -> None:
        """T must not exceed ceil(log2(max(H, W))): beyond it every level is the per-channel mean."""
        top = full_levels(height, width)
        if self.T > top:
            raise ValueError(
                f"pool process with T={self.T} levels on {height}x{width} images: level {top} (blocks of {2**top}) "
                f"already averages the whole image, so levels above it repeat the mean; use timesteps <= {top} "
                "or timesteps=None with image_size"
            )

    def axis_matrices(self, n: int) -> Tensor:
        """[P_0 = I, ..., P_T] for one axis of length n."""
        return block_average_matrices(n, self.T)

    def config(self) -> dict[str, Any]:
        """Constructor options (JSON-able)."""
        out = super().config()
        out["image_size"] = None if self.image_size is None else list(self.image_size)
        return out
