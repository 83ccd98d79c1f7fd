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
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

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
        params = [p.detach() for p in model.parameters()]
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
