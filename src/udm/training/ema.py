"""Exponential moving average of the weights (Polyak averaging), by decay or by EDM's half-life.

theta_ema <- beta theta_ema + (1 - beta) theta after every optimizer step, with
either a fixed ``decay`` beta (DDPM: 0.9999) or a half-life in training
*samples* (Karras et al. 2022, Appendix F: beta = 0.5^(batch / half_life),
with the half-life ramped up as ``rampup_ratio`` times the samples seen so far
so that early averages do not remember the random initialisation). The EMA is
what samplers use: it gives visibly better samples than the raw weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """An averaged copy of ``model`` (``.module``), updated with :meth:`update`."""

    def __init__(
        self,
        model: nn.Module,
        decay: float | None = 0.999,
        half_life: float | None = None,
        rampup_ratio: float | None = None,
    ) -> None:
        if (decay is None) == (half_life is None):
            raise ValueError("EMA needs exactly one of decay (e.g. 0.999) or half_life (in training samples)")
        if decay is not None and not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        if half_life is not None and half_life <= 0:
            raise ValueError(f"EMA half_life must be > 0 samples, got {half_life}")
        self.decay, self.half_life, self.rampup_ratio = decay, half_life, rampup_ratio
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def beta(self, batch_size: int, samples_seen: int) -> float:
        """The averaging factor for a step of ``batch_size`` after ``samples_seen`` samples."""
        if self.decay is not None:
            return self.decay
        half_life = self.half_life
        if self.rampup_ratio is not None:
            half_life = min(half_life, self.rampup_ratio * samples_seen)
        return 0.5 ** (batch_size / max(half_life, 1e-8))

    @torch.no_grad()
    def update(self, model: nn.Module, batch_size: int = 1, samples_seen: int = 0) -> None:
        """theta_ema <- beta theta_ema + (1 - beta) theta; buffers are copied."""
        beta = self.beta(batch_size, samples_seen)
        ema_params = list(self.module.parameters())
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - beta)
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)
