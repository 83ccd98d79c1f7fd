"""Guidance (THEORY §2): a Denoiser that wraps a Denoiser, so every sampler and every process gets it unchanged.

Each guide returns the guided x0_hat, the quantity all samplers consume:

* :class:`ClassifierFreeGuidance` (G4): x0 = x0_u + (1 + w)(x0_c - x0_u) from one
  doubled batch (condition and null label); for token models (the ``logits``
  prediction, e.g. the mask process) the same combination of log-probabilities,
  log p_u + (1 + w)(log p_c - log p_u), i.e. p ∝ p_c^(1+w) / p_u^w. For a linear process eps,
  velocity, v and score are affine in x0 with the same coefficients for both
  terms, so combining in any of those forms gives the same x0: this is the
  eps form (1 + w) eps_c - w eps_u of §2.1, and it holds for any noise law.
  With ``interval=(lo, hi)`` guidance is applied only where sigma~ = sigma/alpha
  lies in [lo, hi] (the conditional prediction elsewhere).
* :class:`GradientGuidance` (G2, G3): x0 += gamma (sigma^2 / alpha) grad_x log f(x_t, t, y),
  the x0 form of the score shift s += gamma grad log f (§2.1 "equivalent forms";
  eps -= gamma sigma grad log f). :class:`ClassifierGuidance` takes log f from a
  noise-aware classifier's log-softmax, or from a clean-data classifier applied to
  x0_hat(x_t) (``clean=True``); :class:`EnergyGuidance` takes any differentiable
  ``energy(x_t, t, y)`` (cosine similarity of encoders, Gram distances, ...).

The gradient shift is exact Bayes for Gaussian noise (score = -eps/sigma); for
other noise laws it is the same first-order rule applied to the x0 estimate.

**Where alpha = 0** (rectified flow at t = 1, the start of its default grid)
x_t = sigma eps carries no information about x0, so p(y | x_t) = p(y): the
score shift gamma grad log p(y | x_t) is 0 there, and its x0 form
(sigma^2 / alpha) grad log p(y | x_t) is 0/0. What the samplers need at that
point is the guided x0 itself, and it has a finite limit as alpha -> 0:
grad log p(y | x_t) vanishes like alpha, and at gamma = 1 the shift tends to
E[x0 | y] - E[x0], so the guided x0 is the class mean, the conditional model's
x0_hat at alpha = 0 (an unguided network is trained to output such limits).
A guide cannot evaluate 0/0, so :class:`GradientGuidance` takes the limit
one-sidedly: where alpha = 0 it evaluates the shift (gradient and coefficient)
at the time where sigma/alpha = ``endpoint_sigma_tilde`` (default 80, EDM's
sigma_max; VP starts near 150), an O(1/80) relative error in a shift that a
step of size h multiplies by O(h). Dropping the shift there instead (its score
form) would leave the first step unguided, an O(h) error in every sample.
An energy whose gradient does not vanish at alpha = 0 has no finite x0 form
there (the guided velocity grows like 1/alpha); the same rule caps its shift
at the one it has at sigma/alpha = 80, about what a VP process meets at t_max.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .denoiser import Denoiser
from .processes.base import LinearPath, require, time_tensor
from .registry import Registry

Tensor = torch.Tensor


def _labels(cond: object, x: Tensor, num_classes: int | None, what: str) -> Tensor:
    """``cond`` as (B,) int64 labels in [0, num_classes), with a clear error otherwise."""
    if cond is None:
        raise ValueError(f"{what} needs a condition: pass cond= (class labels) to udm.sample")
    y = torch.as_tensor(cond, device=x.device)
    if y.ndim == 0:
        y = y.expand(x.shape[0])
    if y.shape != (x.shape[0],) or y.is_floating_point():
        raise ValueError(f"{what}: cond must be one integer label or one per sample ({x.shape[0]}), got shape {tuple(y.shape)}")
    if num_classes is not None and bool(((y < 0) | (y >= num_classes)).any()):
        bad = int(y[(y < 0) | (y >= num_classes)][0])
        raise ValueError(f"{what}: class {bad} is outside the label set 0..{num_classes - 1}")
    return y.long()


class ClassifierFreeGuidance(nn.Module):
    """x0_u + (1 + w)(x0_c - x0_u) with x0_u the null-label prediction (THEORY §2.2, G4).

    The wrapped denoiser's network must have been trained with condition dropout
    (a null label ``net.null_class``). ``w = 0`` is the conditional model,
    ``w = -1`` the unconditional one.
    """

    def __init__(self, denoiser: Denoiser, w: float, interval: tuple[float, float] | None = None) -> None:
        super().__init__()
        null = getattr(getattr(denoiser, "net", None), "null_class", None)
        if null is None:
            raise ValueError(
                "classifier-free guidance needs a model trained with a null label (a class-conditional network "
                "with condition dropout); this denoiser's network has no null_class"
            )
        if interval is not None and not (len(interval) == 2 and 0 <= interval[0] < interval[1]):
            raise ValueError(f"guidance interval must be (lo, hi) with 0 <= lo < hi in sigma/alpha units, got {interval!r}")
        self.denoiser, self.w, self.null, self.interval = denoiser, float(w), int(null), interval
        self.process = denoiser.process

    def forward(self, x: Tensor, t: float | Tensor, cond: object = None) -> Tensor:
        y = _labels(cond, x, self.null, "classifier-free guidance")
        t_raw = torch.as_tensor(t, dtype=torch.float64, device=x.device)
        t2 = t_raw if t_raw.ndim == 0 else torch.cat([t_raw, t_raw])
        both = self.denoiser(torch.cat([x, x]), t2, torch.cat([y, torch.full_like(y, self.null)]))
        x0_c, x0_u = both.chunk(2)
        if getattr(self.denoiser, "prediction", None) == "logits":  # token models: guide the log-probabilities
            x0_c, x0_u = torch.log_softmax(x0_c.float(), -1), torch.log_softmax(x0_u.float(), -1)
        guided = x0_u + (1.0 + self.w) * (x0_c - x0_u)
        if self.interval is None:
            return guided
        st = require(self.process, LinearPath, "a guidance interval").sigma_tilde(time_tensor(t, x)).to(x.device)
        return torch.where((st >= self.interval[0]) & (st <= self.interval[1]), guided, x0_c)


#: sigma/alpha at which the guidance shift stands in for its limit where alpha = 0 (module docstring).
ENDPOINT_SIGMA_TILDE = 80.0


class GradientGuidance(nn.Module):
    """x0_hat + gamma (sigma_t^2 / alpha_t) grad_x log f(x_t, t, y) (THEORY §2.1 "equivalent forms", G2-G3).

    ``log_f(x, t, cond)`` returns one value per sample; the wrapped denoiser is
    called without the condition (an unconditional model). Where alpha_t = 0 the
    shift is evaluated at sigma/alpha = ``endpoint_sigma_tilde`` instead: its
    one-sided limit (module docstring); x0_hat itself is still taken at t.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        log_f: Callable[[Tensor, Tensor, object], Tensor],
        gamma: float = 1.0,
        endpoint_sigma_tilde: float = ENDPOINT_SIGMA_TILDE,
    ) -> None:
        super().__init__()
        if not (endpoint_sigma_tilde > 0 and endpoint_sigma_tilde < float("inf")):
            raise ValueError(f"endpoint_sigma_tilde must be a finite noise level > 0, got {endpoint_sigma_tilde!r}")
        self.denoiser, self.log_f, self.gamma = denoiser, log_f, float(gamma)
        self.endpoint_sigma_tilde = float(endpoint_sigma_tilde)
        self.process = require(denoiser.process, LinearPath, "gradient guidance")

    def shift_time(self, t: float | Tensor, x: Tensor) -> float | Tensor:
        """The time the shift is evaluated at: t, or where alpha_t = 0 the time of sigma/alpha = ``endpoint_sigma_tilde``.

        Keeps the form of ``t`` (a float, a 0-d or a (B,) tensor), so ``log_f`` sees what it would have seen.
        """
        tt = torch.as_tensor(t, dtype=torch.float64, device=x.device)
        vanishing = self.process.alpha(tt).to(x.device) == 0
        if not bool(vanishing.any()):
            return t
        end = self.process.t_from_sigma_tilde(torch.tensor(self.endpoint_sigma_tilde, dtype=torch.float64)).to(tt)
        shifted = torch.where(vanishing, end, tt)
        return float(shifted) if not isinstance(t, Tensor) else shifted.to(t.dtype)

    def gradient(self, x: Tensor, t: float | Tensor, cond: object) -> Tensor:
        """grad_x log f(x_t, t, y), by autograd."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            value = self.log_f(xg, t, cond)
            if value.shape != (x.shape[0],):
                raise ValueError(f"the guidance function must return one value per sample ({x.shape[0]},), got {tuple(value.shape)}")
            (g,) = torch.autograd.grad(value.sum(), xg)
        return g

    def forward(self, x: Tensor, t: float | Tensor, cond: object = None) -> Tensor:
        with torch.no_grad():
            x0 = self.denoiser(x, t)
        t_shift = self.shift_time(t, x)
        tt = time_tensor(t_shift, x)
        a, s = self.process.alpha(tt).to(x.device), self.process.sigma(tt).to(x.device)
        return x0 + (self.gamma * s**2 / a).to(x.dtype) * self.gradient(x, t_shift, cond)


class ClassifierGuidance(GradientGuidance):
    """Classifier guidance (THEORY §2.2, G1-G2): log f = log p(y | x_t, t) from ``classifier(x_t, t) -> logits``.

    With ``clean=True`` the classifier was trained on clean data and is applied
    to the denoiser's x0_hat(x_t) (§2.1, "clean-data classifier substitute"); the
    gradient then flows through the denoiser.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        classifier: Callable[..., Tensor],
        gamma: float = 1.0,
        clean: bool = False,
        endpoint_sigma_tilde: float = ENDPOINT_SIGMA_TILDE,
    ) -> None:
        super().__init__(denoiser, self._log_prob, gamma, endpoint_sigma_tilde)
        self.classifier, self.clean = classifier, bool(clean)

    def _log_prob(self, x: Tensor, t: float | Tensor, cond: object) -> Tensor:
        logits = self.classifier(self.denoiser(x, t)) if self.clean else self.classifier(x, t)
        if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
            raise ValueError(f"the classifier must return logits of shape ({x.shape[0]}, classes), got {tuple(logits.shape)}")
        y = _labels(cond, x, logits.shape[1], "classifier guidance")
        return torch.log_softmax(logits.to(torch.float64), -1).gather(1, y[:, None])[:, 0]


class EnergyGuidance(GradientGuidance):
    """Similarity / energy guidance (THEORY §2.2, G3): log f = energy(x_t, t, y) for any differentiable energy."""

    def __init__(
        self,
        denoiser: Denoiser,
        energy: Callable[[Tensor, Tensor, object], Tensor],
        gamma: float = 1.0,
        endpoint_sigma_tilde: float = ENDPOINT_SIGMA_TILDE,
    ) -> None:
        super().__init__(denoiser, energy, gamma, endpoint_sigma_tilde)


def cosine_energy(encoder_x: Callable[[Tensor, Tensor], Tensor], target: Tensor) -> Callable[[Tensor, Tensor, object], Tensor]:
    """sim = cos(E_1(x_t, t), E_2(y)) with the target embedding E_2(y) given (THEORY §2.1, similarity guidance)."""

    def energy(x: Tensor, t: Tensor, cond: object) -> Tensor:
        return torch.nn.functional.cosine_similarity(encoder_x(x, t).flatten(1), target.flatten(1).to(x.dtype), dim=1)

    return energy


def gram_energy(features: Callable[[Tensor], Tensor], style: Tensor) -> Callable[[Tensor, Tensor, object], Tensor]:
    """-|G(F(x)) - G(F(style))|^2 with G the Gram matrix of (B, C, ...) features: a style distance (THEORY §2.1)."""

    def gram(f: Tensor) -> Tensor:
        f = f.flatten(2)
        return f @ f.transpose(1, 2) / f.shape[-1]

    target = gram(features(style)).detach()

    def energy(x: Tensor, t: Tensor, cond: object) -> Tensor:
        return -(gram(features(x)) - target).pow(2).flatten(1).sum(1)

    return energy


GUIDES: Registry[Callable[..., nn.Module]] = Registry("guidance")
for _name, _cls in (("cfg", ClassifierFreeGuidance), ("classifier", ClassifierGuidance), ("energy", EnergyGuidance)):
    GUIDES.register(_name, _cls)
