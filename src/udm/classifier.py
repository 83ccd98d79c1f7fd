"""Noise-aware classifiers p(y | x_t, t) (THEORY §2.2, G1): what classifier guidance differentiates.

A :class:`NoisyClassifier` pairs a class-logit network (``network.name:
classifier``) with the process whose noisy states it reads; ``udm train`` fits it
with ``loss.objective: classification`` (the cross-entropy of
:class:`udm.losses.ClassificationLoss` on x_t = F_t(x0, eps) at the times the
time sampler draws), and ``udm sample MODEL --classifier RUN --gamma G`` steers a
model with it through :class:`udm.guidance.ClassifierGuidance`.
"""

from __future__ import annotations

import torch
from torch import nn

from .processes.base import Process, time_tensor
from .processes.gaussian import LinearProcess

Tensor = torch.Tensor


class NoisyClassifier(nn.Module):
    """logits(x_t, t) = net(c_in(t) x_t, t), for states of ``process`` (THEORY §2.2, G1).

    For a linear process x_t = alpha x0 + sigma eps the input is scaled by
    c_in = 1 / sqrt(alpha^2 sigma_data^2 + sigma^2), EDM's input scaling for any
    alpha: every noise level reaches the network at about unit scale, which a VE
    or EDM process (sigma up to 80) needs. Other processes' states (blur, masks)
    enter unscaled. ``t`` reaches the network raw; the network scales it by its
    ``time_scale``.
    """

    def __init__(self, net: nn.Module, process: Process, sigma_data: float = 0.5) -> None:
        super().__init__()
        self.net, self.process, self.sigma_data = net, process, float(sigma_data)
        self.num_classes = int(net.num_classes)
        self.shape = tuple(getattr(net, "shape", ()))

    def raw(self, x: Tensor, t: float | Tensor, cond: object = None) -> Tensor:
        """(B, num_classes) logits at (x_t, t); ``cond`` must be None (the labels are targets, not inputs)."""
        if self.shape and tuple(x.shape[1:]) != self.shape:
            raise ValueError(
                f"the classifier takes inputs of shape {self.shape} but got {tuple(x.shape[1:])}: "
                "train the classifier on the same data as the model it guides"
            )
        tt = time_tensor(t, x)
        if isinstance(self.process, LinearProcess):
            a, s = self.process.alpha(tt), self.process.sigma(tt)
            x = x * torch.rsqrt(a**2 * self.sigma_data**2 + s**2).to(x.dtype)
        t_in = tt.reshape(-1).to(torch.float32).expand(x.shape[0])
        out = self.net(x, t_in) if cond is None else self.net(x, t_in, cond)
        if not isinstance(out, Tensor) or tuple(out.shape) != (x.shape[0], self.num_classes):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"a classifier network must return logits of shape ({x.shape[0]}, {self.num_classes}), got {shape}: "
                "use network 'classifier'"
            )
        return out

    def forward(self, x: Tensor, t: float | Tensor) -> Tensor:
        """Logits of p(y | x_t, t)."""
        return self.raw(x, t)

    @torch.no_grad()
    def accuracy(self, x0: Tensor, y: Tensor, t: float, seed: int = 0, batch_size: int = 500) -> float:
        """Share of ``x0`` classified as ``y`` after corrupting it to time ``t`` (noise drawn from ``seed``)."""
        gen = torch.Generator(device=x0.device).manual_seed(seed)
        correct = 0
        for lo in range(0, len(x0), batch_size):
            xb, yb = x0[lo : lo + batch_size], y[lo : lo + batch_size]
            eps = self.process.sample_noise(self.process.state_shape(xb.shape), gen, dtype=xb.dtype, device=xb.device)
            tb = torch.full((len(xb),), float(t), dtype=torch.float64, device=xb.device)
            correct += int((self.raw(self.process.corrupt(xb, tb, eps), tb).argmax(1) == yb).sum())
        return correct / max(len(x0), 1)
