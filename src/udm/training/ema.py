"""Exponential moving average of the weights (Polyak averaging), by decay or by EDM's half-life.

theta_ema <- beta theta_ema + (1 - beta) theta after every optimizer step, with
either a fixed ``decay`` beta (DDPM: 0.9999) or a half-life in training
*samples* (Karras et al. 2022, Appendix F: beta = 0.5^(batch / half_life),
with the half-life ramped up as ``rampup_ratio`` times the samples seen so far
so that early averages do not remember the random initialisation). The EMA is
what samplers use: it gives visibly better samples than the raw weights.

Early in training the average is still mostly the random initialisation: after
n updates with a fixed decay beta, the initial weights keep the share beta^n
(0.999^300 = 0.74). The EMA tracks that share (``init_share``, the product of
every beta used; the trainer sets it to 0 when the EMA starts from trained
weights, ``train.init_from``) and its number of ``updates``; checkpoints record both, and
:func:`ema_warmup_note` turns them into the warning ``udm sample`` prints when
it samples such weights. (An EDM-style ramp of the decay would avoid the
problem but change every trained output; the note leaves training as it is.)

:class:`PowerEMA` is the other averaging law, the power-function EMA of
Karras et al. 2024 (EDM2), Sec. 3 / App. C: its averaging profile is
``p_t(tau) = (gamma + 1) tau^gamma / t^(gamma + 1)`` on [0, t], a fixed shape
stretched over the whole run, whose width relative to t is ``sigma_rel``
(:func:`sigma_rel_to_gamma`). The trainer tracks a few of them so that
:mod:`udm.training.posthoc` can reconstruct any other width after training.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import SIGMA_REL_MAX


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
        self._start(model)

    def _start(self, model: nn.Module) -> None:
        """The average before any update: a frozen copy of ``model``, all of it the initialisation."""
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0
        self.init_share = 1.0

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
        self.updates += 1
        self.init_share *= beta
        ema_params = list(self.module.parameters())
        params = [p.detach().to(e.dtype) for e, p in zip(ema_params, model.parameters())]
        torch._foreach_lerp_(ema_params, params, 1.0 - beta)
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)

    def state(self) -> dict[str, Any]:
        """What a checkpoint records of the average (JSON): its settings, updates, the initial weights' share and the note."""
        return {
            "decay": self.decay,
            "half_life": self.half_life,
            "rampup_ratio": self.rampup_ratio,
            "updates": self.updates,
            "init_share": self.init_share,
            "warmup_note": ema_warmup_note(self.decay, self.updates, init_share=self.init_share),
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore ``updates`` and ``init_share`` from :meth:`state` (older checkpoints lack them: kept as they are)."""
        if isinstance(state.get("updates"), int):
            self.updates = state["updates"]
        if isinstance(state.get("init_share"), (int, float)):
            self.init_share = float(state["init_share"])


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent gamma of the power-function profile whose relative width is ``sigma_rel`` (EDM2, Sec. 3).

    The profile ``p_t(tau) = (gamma + 1) tau^gamma / t^(gamma + 1)`` on [0, t]
    has standard deviation ``sigma_rel * t`` with
    ``sigma_rel^2 = (gamma + 1) / ((gamma + 2)^2 (gamma + 3))``, i.e. gamma is a
    root of ``gamma^3 + 7 gamma^2 + (16 - s^-2) gamma + (12 - s^-2)``. That cubic
    has one root below -3 and two above -1 (the same width is reached once on
    each side of its maximum, 0.3003 at gamma = (sqrt(5) - 3) / 2); the
    largest root is the profile that favours recent weights. ``sigma_rel`` must
    lie in (0, 1/sqrt(12)]: at 1/sqrt(12) gamma is 0, the uniform average of
    the whole run (0.05 gives gamma 16.97, 0.10 gives 6.94).
    """
    sigma_rel = float(sigma_rel)
    if not 0.0 < sigma_rel <= SIGMA_REL_MAX:
        raise ValueError(f"sigma_rel must be in (0, {SIGMA_REL_MAX:.4f}] (1/sqrt(12) is the uniform average), got {sigma_rel}")
    k = sigma_rel**-2
    return max(0.0, float(np.roots([1.0, 7.0, 16.0 - k, 12.0 - k]).real.max()))


def gamma_to_sigma_rel(gamma: float) -> float:
    """The relative width of the power-function profile with exponent ``gamma`` >= 0 (inverse of :func:`sigma_rel_to_gamma`)."""
    gamma = float(gamma)
    if not gamma >= 0.0 or not math.isfinite(gamma):
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma}")
    return math.sqrt((gamma + 1.0) / ((gamma + 2.0) ** 2 * (gamma + 3.0)))


def power_weights(t: int, gamma: float) -> np.ndarray:
    """The weight of theta_k, k = 1..t, in :class:`PowerEMA`'s average after step t (float64, sums to 1).

    ``(k^(gamma+1) - (k-1)^(gamma+1)) / t^(gamma+1)``: exactly the integral of
    the continuous profile p_t over [k-1, k] (see :class:`PowerEMA`).
    """
    u = (np.arange(t + 1, dtype=np.float64) / t) ** (gamma + 1.0)
    return np.diff(u)


class PowerEMA(EMA):
    """The power-function EMA of Karras et al. 2024 (EDM2), Sec. 3 / App. C, in float32.

    After optimizer step t (t = 1, 2, ... counting applied steps only),
    ``theta_ema <- beta_t theta_ema + (1 - beta_t) theta`` with
    ``beta_t = (1 - 1/t)^(gamma + 1)``. Multiplying by t^(gamma+1) shows the
    sum ``t^(gamma+1) theta_ema`` gains ``(t^(gamma+1) - (t-1)^(gamma+1)) theta_t``
    at step t, so the weight of theta_k in the average after step t is
    exactly ``(k^(gamma+1) - (k-1)^(gamma+1)) / t^(gamma+1)``, the integral of
    the continuous profile ``p_t(tau) = (gamma+1) tau^gamma / t^(gamma+1)`` over
    [k-1, k] (:func:`power_weights`). The average is therefore *exactly* the
    integral of p_t against the piecewise-constant weight trajectory
    theta(tau) = theta_k on (k-1, k], which is what lets
    :mod:`udm.training.posthoc` recombine such averages through the L2 inner
    products of their continuous profiles. beta_1 = 0: the initialisation
    has no weight from the first step on.
    """

    def __init__(self, model: nn.Module, sigma_rel: float) -> None:
        self.sigma_rel = float(sigma_rel)
        self.gamma = sigma_rel_to_gamma(self.sigma_rel)
        self.decay = self.half_life = self.rampup_ratio = None
        self._start(model)
        self.module.float()

    def beta(self, batch_size: int = 1, samples_seen: int = 0) -> float:
        """beta_t = (1 - 1/t)^(gamma + 1) for the coming update t = updates + 1 (the batch does not enter)."""
        t = self.updates + 1
        return (1.0 - 1.0 / t) ** (self.gamma + 1.0)

    def state(self) -> dict[str, Any]:
        """What a checkpoint records of this average (JSON): its width, exponent and number of updates."""
        return {"sigma_rel": self.sigma_rel, "gamma": self.gamma, "updates": self.updates}


#: the initial weights' share in the EMA above which sampling it earns a note
EMA_NOTE_THRESHOLD = 0.1


def ema_warmup_note(decay: float | None, steps: int, *, init_share: float | None = None) -> str | None:
    """A one-line warning when EMA weights are still dominated by their initialisation, else None.

    ``init_share`` is the initial weights' share in the average (the product of
    the betas used, recorded in checkpoints as ``ema.init_share``); without it
    it is ``decay ** steps`` for a fixed decay. The note is due when the share
    exceeds :data:`EMA_NOTE_THRESHOLD`, i.e. the averaging horizon
    1 / (1 - decay) is long compared to the ``steps`` trained.
    """
    if init_share is None:
        if decay is None:
            return None
        init_share = decay**steps
    if not init_share > EMA_NOTE_THRESHOLD:
        return None
    horizon = f" (decay {decay:g} averages over about {1.0 / (1.0 - decay):.0f} steps)" if decay is not None and decay < 1 else ""
    return (
        f"the EMA weights{horizon} have seen only {steps} updates, so {100.0 * init_share:.0f}% of them is still the random "
        "initialisation; sample the raw weights (--raw-weights) or train longer"
    )


def ema_note_from_meta(meta: Mapping[str, Any]) -> str | None:
    """:func:`ema_warmup_note` for a checkpoint's ``state.json`` (older checkpoints: from ``config.train.ema`` and ``step``)."""
    state = meta.get("ema")
    if isinstance(state, Mapping) and isinstance(state.get("updates"), int):
        share = state.get("init_share")
        return ema_warmup_note(state.get("decay"), state["updates"], init_share=share if isinstance(share, (int, float)) else None)
    ema = ((meta.get("config") or {}).get("train") or {}).get("ema") or {}
    step = meta.get("step")
    if isinstance(ema, Mapping) and isinstance(ema.get("decay"), (int, float)) and isinstance(step, int):
        return ema_warmup_note(float(ema["decay"]), step)
    return None
