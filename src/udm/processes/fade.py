"""Masking / fading degradation for cold diffusion (THEORY §4.2, "Masking / fading inpainting").

D_t(x) = z_t ⊙ x + (1 - z_t) ⊙ x_end, with the multiplicative mask

    z_t = prod_{i <= t} (1 - g_{s_i} / max g_{s_i}),    s_i = k_std (i + i0),

g_s a 2-D Gaussian bump of std s (pixels) centred on pixel ((H - 1) // 2, (W - 1) // 2),
the pixel the official code's (size + 1)-grid kernel, cropped by one row and
column, is centred on. So g/max g = 1 there and the centre fades at step 1; a
growing disc fades after it. x_end is the constant ``end_value`` (0 for plain
masking; the generation variant fades towards a constant colour). z (T + 1, H, W)
is built once per image size in float64 and cached per (size, device, dtype).

**Default schedule.** THEORY's example (k_std = 0.05, i0 = 1, T = 750) is tuned for
128x128 images: there the faded area grows smoothly and is complete at t = T.
On 28x28 images the same bumps are tiny for the first ~10 steps (s < 0.6 px only
touches the centre pixel) and the image is fully faded by t ~ 200, so most of the
750 steps would do nothing. The defaults here, T = 50, k_std = 0.25, i0 = 1 (s from
0.5 to 12.75 px), fade a 28x28 image smoothly: the faded fraction 1 - mean(z_t)
is ~0.67 at t = T/2 and max z_T < 0.03, so x_T is (almost) x_end. THEORY's
setting stays one option away: ``FadeProcess(750, k_std=0.05, i0=1)``. (Steps count
from i = 1 as in THEORY; the official code's loop starts at 0, i.e. its i0 is ours + 1.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .cold import ColdProcess

Tensor = torch.Tensor


def fade_masks(height: int, width: int, timesteps: int, k_std: float, i0: float) -> Tensor:
    """z_0 = 1, ..., z_T (T + 1, H, W) float64: z_t = prod_{i<=t} (1 - exp(-r^2 / (2 s_i^2))), s_i = k_std (i + i0)."""
    y = torch.arange(height, dtype=torch.float64) - (height - 1) // 2
    x = torch.arange(width, dtype=torch.float64) - (width - 1) // 2
    r2 = y[:, None] ** 2 + x[None, :] ** 2
    s = k_std * (torch.arange(1, timesteps + 1, dtype=torch.float64) + i0)
    keep = 1.0 - torch.exp(-r2[None] / (2.0 * s[:, None, None] ** 2))
    return torch.cat([torch.ones(1, height, width, dtype=torch.float64), torch.cumprod(keep, 0)])


class FadeProcess(ColdProcess):
    """Cold diffusion by fading to ``end_value``: x_t = z_t ⊙ x0 + (1 - z_t) x_end + sigma eps (THEORY §4.2).

    Args:
        timesteps: T (default 50; see the module docstring for the choice of defaults).
        sigma, sigma_schedule: added noise std (0 = pure cold diffusion) and its schedule (:class:`~.cold.ColdProcess`).
        k_std: bump std per step, s_i = k_std (i + i0) in pixels (default 0.25; THEORY: 0.05).
        i0: offset of the std schedule (default 1, as THEORY).
        end_value: the constant x_end that faded pixels become (0 = plain masking).
        prior_weights, prior_means, prior_stds, prior_noise: the generation prior (:class:`~.cold.ColdProcess`).
    """

    name = "fade"

    def __init__(
        self,
        timesteps: int = 50,
        sigma: float = 0.0,
        *,
        sigma_schedule: str = "constant",
        k_std: float = 0.25,
        i0: float = 1.0,
        end_value: float = 0.0,
        prior_weights: Sequence[float] | None = None,
        prior_means: Sequence[Sequence[float]] | None = None,
        prior_stds: Sequence[Sequence[float]] | None = None,
        prior_noise: float = 1e-3,
    ) -> None:
        super().__init__(
            timesteps, sigma, sigma_schedule=sigma_schedule,
            prior_weights=prior_weights, prior_means=prior_means, prior_stds=prior_stds, prior_noise=prior_noise,
        )
        if not (math.isfinite(k_std) and k_std > 0):
            raise ValueError(f"k_std must be > 0, got {k_std!r}")
        if not (math.isfinite(i0) and k_std * (1 + i0) > 0):
            raise ValueError(f"i0 must make the first bump's std k_std * (1 + i0) > 0, got i0={i0!r}")
        if not math.isfinite(end_value):
            raise ValueError(f"end_value must be finite, got {end_value!r}")
        self.k_std, self.i0, self.end_value = float(k_std), float(i0), float(end_value)
        self._mask_cache: dict[tuple[int, int, str, torch.dtype], Tensor] = {}

    def masks(
        self, height: int, width: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float64
    ) -> Tensor:
        """z_0..z_T (T + 1, H, W) for images of this size, cached per (size, device, dtype)."""
        key = (int(height), int(width), str(torch.device(device) if device is not None else "cpu"), dtype)
        if key not in self._mask_cache:
            z = fade_masks(int(height), int(width), self.T, self.k_std, self.i0)
            self._mask_cache[key] = z.to(device=device, dtype=dtype)
        return self._mask_cache[key]

    def _degrade(self, x: Tensor, levels: Tensor) -> Tensor:
        z = self.masks(x.shape[-2], x.shape[-1], x.device, x.dtype)[levels.to(x.device)].unsqueeze(1)
        return z * x + (1.0 - z) * self.end_value

    def config(self) -> dict[str, Any]:
        """Constructor options (JSON-able)."""
        return {**super().config(), "k_std": self.k_std, "i0": self.i0, "end_value": self.end_value}
