"""The classification objective (THEORY §2.2, G1): a noise-aware classifier p(y | x_t, t) for classifier guidance."""

from __future__ import annotations

import torch
from torch import nn

from ..classifier import NoisyClassifier
from ..losses import Loss, LossOutput
from ..processes.base import Process
from .base import Objective

Tensor = torch.Tensor


class ClassificationLoss(Loss):
    """E_t E_{x0, y, eps} w(t) [-log p(y | F_t(x0, eps), t)]: a noise-aware classifier's cross-entropy (THEORY §2.2, G1).

    The batch's labels arrive as ``cond``. Times come from the time sampler as
    for a denoiser, so the classifier learns the noise levels a sampler visits;
    ``model`` is a :class:`udm.classifier.NoisyClassifier`.
    """

    def at(self, model: torch.nn.Module, x0: Tensor, cond: Tensor | None, t: Tensor, w: Tensor, eps: Tensor) -> LossOutput:
        """The cross-entropy on a labelled batch at (t, w, eps)."""
        if cond is None:
            raise ValueError("the classification objective needs class labels: train it on labelled data")
        process = model.process
        logits = model.raw(process.corrupt(x0, t, eps), t)
        ce = torch.nn.functional.cross_entropy(logits.float(), cond.to(logits.device), reduction="none")
        per_sample = ce * w.to(ce.dtype)
        return LossOutput(per_sample.mean(), per_sample, t, w, ce.detach())

    def config(self) -> dict:
        return {"objective": "classification", "time_sampler": self.time_sampler.config()}


class Classification(Objective):
    """Fit a :class:`~udm.classifier.NoisyClassifier` by :class:`ClassificationLoss` (network ``classifier``).

    Its labels are targets, never dropped; it draws no samples; the prediction section is not used.
    """

    name = "classification"
    generative = False
    run_kind = "classifier"
    labels_condition = False
    network_predicts = "y"

    def build_loss(self) -> ClassificationLoss:
        return ClassificationLoss(self.options["time_sampler"])

    def model(self, net: nn.Module, process: Process) -> NoisyClassifier:
        """The network as p(y | x_t, t), its input scaled to unit variance at every noise level."""
        return NoisyClassifier(net, process)
