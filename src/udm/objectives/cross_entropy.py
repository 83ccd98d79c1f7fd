"""The cross-entropy objective for token processes (THEORY §3.1 "discrete data", §4.3-§4.5, U1).

The network outputs logits of q(x0 | x_t, t) over the vocabulary (the
``logits`` prediction, :class:`~udm.denoiser.TokenDenoiser`); the loss is the
token cross-entropy at the positions the process says carry information.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..denoiser import TokenDenoiser
from ..losses import Loss, LossOutput, TimeSampler
from ..processes.base import ELBOWeighted, Process, TokenProcess, require
from .base import Objective

Tensor = torch.Tensor


CE_WEIGHTINGS = ("uniform", "elbo")


class CrossEntropyLoss(Loss):
    """E_t E_{x0, eps} w(t) [-log q(x0 | F_t(x0, eps), t)] for categorical q (THEORY §3.1 "discrete data", U1).

    The network outputs logits over the vocabulary at every position; the loss
    is the token cross-entropy at the positions the process says carry
    information about x0 (``process.loss_positions(x_t, x0)``: the masked ones
    for the absorbing process, THEORY §4.4; all of them by default).

    * ``weighting="uniform"``: the mean cross-entropy over those positions;
    * ``weighting="elbo"``: ``process.elbo_weight(t)`` times their *sum*,
      divided by the length L, so that E_t[...] with t from the uniform time
      sampler is an upper bound on -log p(x0) / L in nats per token (the
      absorbing-process ELBO; divide by ln 2 for bits per token).

    The mask column of a mask process's logits (id V) is not a data token and
    is dropped before the softmax, so it cannot absorb probability.
    """

    def __init__(self, weighting: str = "uniform", time_sampler: str | dict | TimeSampler | None = None) -> None:
        if weighting not in CE_WEIGHTINGS:
            raise ValueError(f"unknown cross-entropy weighting {weighting!r}; valid weightings: {', '.join(CE_WEIGHTINGS)}")
        super().__init__(time_sampler)
        self.weighting = weighting

    def at(self, denoiser: TokenDenoiser, x0: Tensor, cond: Tensor | None, t: Tensor, w: Tensor, eps: Tensor) -> LossOutput:
        """The loss on a batch of token sequences ``x0`` (B, L) at (t, w, eps)."""
        process = denoiser.process
        x_t = process.corrupt(x0, t, eps)
        logits = denoiser.raw(x_t, t, cond)
        tokens = require(process, TokenProcess, "the cross-entropy loss")
        logp = torch.log_softmax(logits[..., : tokens.vocab_size].float(), dim=-1)
        nll = -logp.gather(-1, x0.long().unsqueeze(-1)).squeeze(-1).flatten(1)
        keep = tokens.loss_positions(x_t, x0).flatten(1).to(nll.dtype)
        total = (nll * keep).sum(1)
        if self.weighting == "elbo":
            weight = require(process, ELBOWeighted, "the cross-entropy loss with weighting 'elbo'", "use weighting 'uniform'").elbo_weight
            objective = weight(t).reshape(-1).to(total.dtype) * total / nll.shape[1]
        else:
            objective = total / keep.sum(1).clamp(min=1.0)
        per_sample = objective * w.to(objective.dtype)
        return LossOutput(per_sample.mean(), per_sample, t, w, objective.detach())

    def config(self) -> dict:
        return {"weighting": self.weighting, "time_sampler": self.time_sampler.config()}


class CrossEntropy(Objective):
    """Train the ``logits`` prediction by :class:`CrossEntropyLoss`; ``auto`` for ``logits``.

    ``loss.weighting`` is ``uniform`` (``target``, the default, means it) or ``elbo``.
    """

    name = "cross_entropy"
    keys = ("weighting", "time_sampler")
    process_needs = ((TokenProcess, "use a token process (see `udm list`) or a prediction such as eps, x0 or v"),)

    def __init__(self, prediction: Mapping[str, Any], loss: Mapping[str, Any] | None = None) -> None:
        if prediction["name"] != "logits":
            raise ValueError("the cross_entropy objective needs the 'logits' prediction")
        super().__init__(prediction, loss)

    @classmethod
    def default_for(cls, prediction: str) -> bool:
        return prediction == "logits"

    def build_loss(self) -> CrossEntropyLoss:
        weighting = self.options["weighting"]
        return CrossEntropyLoss("uniform" if weighting == "target" else weighting, self.options["time_sampler"])

    def model(self, net: nn.Module, process: Process) -> TokenDenoiser:
        """A :class:`~udm.denoiser.TokenDenoiser`: the network's logits, shape-checked against the process."""
        return TokenDenoiser(net, process)
