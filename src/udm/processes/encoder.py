"""The encoder ("VAE-like") model of THEORY §4.5: x_t = alpha_t F(x0) + sigma_t eps with a trainable encoder F.

Tokens x0 (B, *positions) are mapped by F to a Gaussian latent
(B, *positions, latent_dim) and diffused there with a Gaussian schedule
(THEORY §4.1). The decoder q(x0 | x_t) is categorical per position and is
trained jointly with F by the cross-entropy -log q(x0 | alpha_t F(x0) + sigma_t eps)
(THEORY §3.1, §4.5; :class:`udm.losses.CrossEntropyLoss`). Sampling is the
Gaussian UDM reverse process in latent space with the generic kernels
K0/K1/K2 (:mod:`udm.kernels`, THEORY §3.1): F_t^{-1}(x0, x_t) =
(x_t - alpha_t F(x0)) / sigma_t. The last step returns x0_hat ~ q(x0 | x_1),
tokens rather than the latent (THEORY §3.2 U2 step 3, §4.5).

F is linear in the one-hot encoding of x0, F(p) = p @ E, so ``corrupt`` and
``recover_noise`` accept either token ids or probabilities over the vocabulary;
F of the decoder's probabilities is the posterior mean of F(x0), which makes
K1 with ``x0_estimate="mean"`` DDIM in latent space (THEORY §4.1, DDIM row).

The encoder is a trained module, so the process holds no weights of its own:
:meth:`EncoderProcess.bind` returns a copy that uses ``net.encoder``. The
trainer binds the raw network for training and the EMA copy for sampling.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .. import rng
from .base import TokenProcessBase, time_tensor
from .catalog import PROCESSES
from .gaussian import GaussianProcess

Tensor = torch.Tensor

X0_ESTIMATES = ("mean", "sample")


def _unwrap_encoder(net: nn.Module) -> nn.Module | None:
    """``net.encoder``, looking through DistributedDataParallel (``.module``) and torch.compile (``._orig_mod``)."""
    seen: set[int] = set()
    while net is not None and id(net) not in seen:
        seen.add(id(net))
        encoder = getattr(net, "encoder", None)
        if isinstance(encoder, nn.Module):
            return encoder
        inner = getattr(net, "module", None)
        net = inner if isinstance(inner, nn.Module) else getattr(net, "_orig_mod", None)
    return None


class EncoderProcess(TokenProcessBase):
    """x_t = alpha_t F(x0) + sigma_t eps over tokens, F trainable (THEORY §4.5).

    * ``vocab_size``: the number of token ids; x0 holds ids in [0, vocab_size).
    * ``latent_dim``: the size d of F(token), so x_t has shape (*data_shape, d).
    * ``schedule``: the name of a Gaussian process in ``udm.processes.PROCESSES``
      (``vp_cosine``, ``vp``, ``ddpm``, ``ve``, ``edm``, ``rectified_flow``, ...),
      built with ``schedule_options``; its alpha_t, sigma_t, t_min/t_max/t_eps
      and default grid are this process's.
    * ``x0_estimate``: how the sampler turns the decoder's logits into x0_hat
      (THEORY §3.2 U2 step 2.1): ``"mean"``, the probabilities (the posterior
      mean of the one-hot, so K1 is DDIM in latent space), or ``"sample"``, a
      categorical draw of token ids (the exact-posterior variant of §3.1,
      consequence 2).

    Use :meth:`bind` to attach a network's encoder before corrupting or sampling.
    """

    name = "encoder"
    noise_is_standard_normal = True

    def __init__(
        self,
        vocab_size: int,
        latent_dim: int = 16,
        schedule: str = "vp_cosine",
        x0_estimate: str = "mean",
        **schedule_options: Any,
    ) -> None:
        if not isinstance(vocab_size, int) or vocab_size < 2:
            raise ValueError(f"vocab_size must be an integer >= 2, got {vocab_size!r}")
        if not isinstance(latent_dim, int) or latent_dim < 1:
            raise ValueError(f"latent_dim must be an integer >= 1, got {latent_dim!r}")
        if x0_estimate not in X0_ESTIMATES:
            raise ValueError(f"unknown x0_estimate {x0_estimate!r}; valid: {', '.join(X0_ESTIMATES)}")
        if schedule == self.name:
            raise ValueError("the encoder process's schedule must be a Gaussian process, not 'encoder' itself")
        factory = PROCESSES.get(schedule)
        try:
            gaussian = factory(**schedule_options)
        except TypeError as e:
            raise ValueError(f"schedule {schedule!r} cannot be built from options {schedule_options!r}: {e}") from e
        if not isinstance(gaussian, GaussianProcess):
            raise ValueError(
                f"the encoder process needs a Gaussian schedule (x_t = alpha F(x0) + sigma eps), "
                f"but {schedule!r} builds {type(gaussian).__name__}"
            )
        self.vocab_size = vocab_size
        self.latent_dim = latent_dim
        self.schedule_name = schedule
        self.schedule_options = dict(schedule_options)
        self.x0_estimate = x0_estimate
        self.gaussian = gaussian
        self.t_min = gaussian.t_min
        self.t_max = gaussian.t_max
        self.t_eps = gaussian.t_eps
        self.default_grid_name = gaussian.default_grid_name
        self.encoder: nn.Module | None = None

    # --- the encoder F ------------------------------------------------------------------------------
    def bind(self, net: nn.Module) -> EncoderProcess:
        """A copy of this process whose encoder F is ``net.encoder`` (this process is left unchanged).

        Functional on purpose: the trainer binds the raw network for the loss
        and the EMA copy for sampling, and neither binding disturbs the other.
        DistributedDataParallel and torch.compile wrappers are looked through.
        """
        encoder = _unwrap_encoder(net)
        if encoder is None:
            raise ValueError(
                f"cannot bind the encoder process to {type(net).__name__}: it has no `encoder` module; "
                "use a network that owns its encoder F, e.g. LatentTransformer (network 'latent_transformer')"
            )
        for field in ("vocab_size", "latent_dim"):
            have = getattr(encoder, field, None)
            if have is not None and have != getattr(self, field):
                raise ValueError(
                    f"the network's encoder has {field}={have} but the encoder process has {field}={getattr(self, field)}; "
                    "build both with the same value"
                )
        out = copy.copy(self)
        out.encoder = encoder
        return out

    def network_options(self) -> dict[str, Any]:
        """The network embeds the data vocabulary and its encoder F maps it to ``latent_dim`` (THEORY §4.5)."""
        return {**super().network_options(), "latent_dim": self.latent_dim}

    def encode(self, x0: Tensor) -> Tensor:
        """F(x0): token ids (B, *positions) or probabilities (B, *positions, V) -> latents (B, *positions, d)."""
        if self.encoder is None:
            raise ValueError(
                "this encoder process is not bound to a network: call process.bind(net) with a network that has an "
                "`encoder` (e.g. LatentTransformer) before corrupting, training or sampling"
            )
        if x0.is_floating_point():
            if x0.ndim < 2 or x0.shape[-1] != self.vocab_size:
                raise ValueError(
                    f"floating x0 of shape {tuple(x0.shape)} must be probabilities over the vocabulary, with a last axis "
                    f"of size vocab_size={self.vocab_size}; pass token ids as an integer tensor"
                )
        elif x0.is_complex() or x0.dtype == torch.bool:
            raise ValueError(f"x0 must be integer token ids or float probabilities, got dtype {x0.dtype}")
        else:
            self.check_tokens(x0)
        z = self.encoder(x0)
        if z.shape[-1] != self.latent_dim:
            raise ValueError(
                f"the encoder returned latents of size {z.shape[-1]}, but the process has latent_dim={self.latent_dim}"
            )
        return z

    def check_tokens(self, x0: Tensor) -> None:
        """Raise a ValueError naming the first token id outside [0, vocab_size) (skipped under torch.compile)."""
        if x0.numel() and not torch.compiler.is_compiling():
            lo, hi = (int(v) for v in torch.aminmax(x0))
            if lo < 0 or hi >= self.vocab_size:
                raise ValueError(f"token id {lo if lo < 0 else hi} is out of range [0, {self.vocab_size - 1}]")

    # --- the Process protocol -----------------------------------------------------------------------
    def corrupt(self, x0: Tensor, t: float | Tensor, eps: Tensor) -> Tensor:
        """F_t(x0, eps) = alpha_t F(x0) + sigma_t eps (THEORY §4.5), in eps's dtype.

        ``x0`` is token ids (B, *positions) or probabilities (B, *positions, V);
        ``eps`` has the state shape (B, *positions, latent_dim).
        """
        z = self.encode(x0)
        if eps.shape != z.shape:
            raise ValueError(
                f"eps has shape {tuple(eps.shape)} but F(x0) has shape {tuple(z.shape)}; "
                "draw it with process.sample_noise(process.state_shape(x0_shape))"
            )
        tt = time_tensor(t, z)
        a, s = self.gaussian.alpha(tt).to(eps.dtype), self.gaussian.sigma(tt).to(eps.dtype)
        return a * z.to(eps.dtype) + s * eps

    def recover_noise(
        self, x0: Tensor, x_t: Tensor, t: float | Tensor, *, generator: rng.GeneratorLike = None
    ) -> Tensor:
        """F_t^{-1}(x0, x_t) = (x_t - alpha_t F(x0)) / sigma_t (THEORY §4.1 in latent space); needs sigma_t > 0."""
        z = self.encode(x0)
        if x_t.shape != z.shape:
            raise ValueError(f"x_t has shape {tuple(x_t.shape)} but F(x0) has shape {tuple(z.shape)}")
        tt = time_tensor(t, x_t)
        a, s = self.gaussian.alpha(tt).to(x_t.dtype), self.gaussian.sigma(tt).to(x_t.dtype)
        return (x_t - a * z.to(x_t.dtype)) / s

    def prior(
        self,
        shape: Sequence[int],
        generator: rng.GeneratorLike = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """x_T ~ N(0, sigma_T^2 I) in the state shape (B, *positions, latent_dim) (THEORY §4.1 prior, §4.5)."""
        shape = tuple(shape)
        if len(shape) < 2 or shape[-1] != self.latent_dim:
            raise ValueError(
                f"the prior takes the latent state shape (B, ..., {self.latent_dim}), got {shape}; "
                "use process.state_shape(data_shape)"
            )
        return self.gaussian.prior(shape, generator, dtype=dtype, device=device)

    def state_shape(self, data_shape: Sequence[int]) -> tuple[int, ...]:
        """(B, *positions) -> (B, *positions, latent_dim): x_t lives in the latent space."""
        return (*tuple(data_shape), self.latent_dim)

    def output_shape(self, state_shape: Sequence[int]) -> tuple[int, ...]:
        """(B, *positions, latent_dim) -> (B, *positions, vocab_size): the decoder returns logits."""
        state_shape = tuple(state_shape)
        if not state_shape or state_shape[-1] != self.latent_dim:
            raise ValueError(f"x_t must have a last axis of size latent_dim={self.latent_dim}, got shape {state_shape}")
        return (*state_shape[:-1], self.vocab_size)

    def estimate_x0(
        self, out: Tensor, x_t: Tensor, t: float | Tensor, *, generator: rng.GeneratorLike = None
    ) -> Tensor:
        """x0_hat from the decoder's logits (THEORY §3.2 U2 step 2.1).

        ``"mean"``: softmax probabilities (B, *positions, V), the posterior mean
        of the one-hot; ``"sample"``: token ids drawn from them, row i from
        generator i when a list is given. Integer ids of the data shape pass through.
        """
        data_shape = tuple(x_t.shape[:-1])
        if not out.is_floating_point():
            if tuple(out.shape) != data_shape:
                raise ValueError(f"integer x0 estimates must have the data shape {data_shape}, got {tuple(out.shape)}")
            self.check_tokens(out)
            return out
        expected = self.output_shape(x_t.shape)
        if tuple(out.shape) != expected:
            raise ValueError(
                f"the decoder returned shape {tuple(out.shape)}; the encoder process needs logits of shape {expected}"
            )
        probs = torch.softmax(out.float() if out.dtype in (torch.float16, torch.bfloat16) else out, dim=-1)
        if self.x0_estimate == "mean":
            return probs
        u = rng.rand((*data_shape, 1), generator, dtype=probs.dtype, device=probs.device)
        ids = (probs.cumsum(-1) <= u).sum(-1)
        return ids.clamp_max(self.vocab_size - 1)

    def finish(self, x: Tensor, x0_hat: Tensor | None) -> Tensor:
        """Token ids (B, *positions): the last x0_hat ~ q(x0 | x_1), not the latent (THEORY §3.2 U2 step 3, §4.5).

        The last draw for ``"sample"``; the argmax of the last probabilities for ``"mean"``.
        """
        if x0_hat is None:
            raise ValueError("the encoder process returns the last x0 estimate, but the sampler made no step")
        return x0_hat if not x0_hat.is_floating_point() else x0_hat.argmax(-1)

    def config(self) -> dict[str, Any]:
        """The constructor arguments (JSON-able): ``EncoderProcess(**p.config())`` rebuilds the process, unbound."""
        return {
            "vocab_size": self.vocab_size,
            "latent_dim": self.latent_dim,
            "schedule": self.schedule_name,
            "x0_estimate": self.x0_estimate,
            **self.schedule_options,
        }

    def __repr__(self) -> str:
        state = "bound" if self.encoder is not None else "unbound"
        return (
            f"EncoderProcess(vocab_size={self.vocab_size}, latent_dim={self.latent_dim}, "
            f"x0_estimate={self.x0_estimate!r}, {self.gaussian!r}, {state})"
        )
