"""Networks for the encoder ("VAE-like") model of THEORY §4.5: a token encoder F and a latent decoder q(x0 | x_t).

The model is x_t = alpha_t F(x0) + sigma_t eps with a *trainable* encoder F
from tokens into R^{latent_dim} per position, trained jointly with the decoder
by the cross-entropy -log q(x0 | alpha_t F(x0) + sigma_t eps) (THEORY §3.1
"Learning p(x0 | x_t)", §4.5). :class:`LatentTransformer` is the decoder and
owns the encoder as ``.encoder`` (a :class:`TokenEncoder`), so one module holds
every trained weight: the optimizer, EMA and checkpoints see them all, and
:meth:`udm.processes.encoder.EncoderProcess.bind` picks the encoder out of
whichever copy (raw or EMA) is being used.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import ConditionEmbedding, Network
from .transformer import TransformerTrunk

Tensor = torch.Tensor


class TokenEncoder(nn.Module):
    """F(x) = sqrt(d) E[x] / ||E[x]||: a token embedding whose rows have unit RMS (THEORY §4.5).

    Why the normalisation: the encoder is trained jointly with the decoder, and
    in x_t = alpha_t F(x0) + sigma_t eps a free scale lets it multiply F(x0) by
    any factor, which drives the signal-to-noise ratio to infinity at every
    t < t_max; the decoder then reads x0 off x_t at all times and the
    "diffusion" collapses to the identity map, while x_T ~ N(0, sigma_T^2 I)
    no longer resembles any x_t the decoder was trained on. With every row
    fixed to norm sqrt(d) (unit RMS, the scale of the noise per coordinate)
    the encoder can only choose *directions*, so the schedule keeps its meaning.

    ``forward`` accepts token ids (..., ) of an integer dtype, or probabilities
    (..., vocab_size) over tokens. F is linear in the one-hot encoding,
    F(p) = p @ E_normalised, so F(one_hot(x)) = F(x) and F of posterior
    probabilities is the posterior mean of F(x0).
    """

    def __init__(self, vocab_size: int, latent_dim: int) -> None:
        super().__init__()
        if vocab_size < 1 or latent_dim < 1:
            raise ValueError(f"vocab_size and latent_dim must be >= 1, got {vocab_size} and {latent_dim}")
        self.vocab_size = int(vocab_size)
        self.latent_dim = int(latent_dim)
        self.weight = nn.Parameter(torch.randn(self.vocab_size, self.latent_dim))

    def table(self) -> Tensor:
        """The normalised embedding table (vocab_size, latent_dim): every row has RMS 1 (norm sqrt(latent_dim))."""
        return math.sqrt(self.latent_dim) * F.normalize(self.weight, dim=-1, eps=1e-12)

    def forward(self, x: Tensor) -> Tensor:
        """F(x): ids (...,) -> (..., latent_dim), or probabilities (..., vocab_size) -> (..., latent_dim)."""
        if x.is_floating_point():
            if x.ndim < 1 or x.shape[-1] != self.vocab_size:
                raise ValueError(
                    f"TokenEncoder got a floating tensor of shape {tuple(x.shape)}: floating input must be probabilities "
                    f"over the vocabulary (last axis {self.vocab_size}); pass token ids as an integer tensor"
                )
            table = self.table()
            return x.to(table.dtype) @ table
        if x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"TokenEncoder expects integer token ids or float probabilities, got dtype {x.dtype}")
        check_token_ids(x, self.vocab_size)
        return F.embedding(x, self.table())


def check_token_ids(x: Tensor, vocab_size: int) -> None:
    """Raise a ValueError naming the first out-of-range id if ``x`` has ids outside [0, vocab_size).

    Skipped while ``torch.compile`` traces (the check needs the values on the host).
    """
    if x.numel() and not torch.compiler.is_compiling():
        lo, hi = (int(v) for v in torch.aminmax(x))
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"token id {lo if lo < 0 else hi} is out of range [0, {vocab_size - 1}]")


class LatentTransformer(Network):
    """Decoder q(x0 | x_t) of the encoder model (THEORY §4.5): latents (B, L, latent_dim) -> logits (B, L, vocab_size).

    ``forward(z, t, cond=None)`` projects each position's latent with
    Linear(latent_dim, hidden), adds learned positions, and runs the shared
    adaLN-Zero :class:`~udm.nets.transformer.TransformerTrunk` conditioned on
    :class:`~udm.nets.embeddings.ConditionEmbedding` (t, and class labels when
    ``num_classes`` is set). Attention is bidirectional. The head is
    zero-initialised, so an untrained network gives uniform logits.

    ``.encoder`` is the trainable :class:`TokenEncoder` F of the forward
    process; the network itself never calls it (the process does, when it
    corrupts x0), but owning it makes F part of this module's parameters.
    """

    def __init__(
        self,
        vocab_size: int,
        seq_len: int,
        latent_dim: int = 16,
        hidden: int = 256,
        depth: int = 4,
        num_heads: int = 4,
        num_classes: int | None = None,
        time_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if vocab_size < 1 or seq_len < 1 or latent_dim < 1:
            raise ValueError(
                f"vocab_size, seq_len and latent_dim must be >= 1, got {vocab_size}, {seq_len} and {latent_dim}"
            )
        self.vocab_size = int(vocab_size)
        self.seq_len = int(seq_len)
        self.latent_dim = int(latent_dim)
        self.num_classes = num_classes
        self.encoder = TokenEncoder(vocab_size, latent_dim)
        self.proj = nn.Linear(latent_dim, hidden)
        self.pos = nn.Parameter(torch.randn(1, seq_len, hidden) * 0.02)
        self.cond_embed = ConditionEmbedding(hidden, hidden, "sinusoidal", time_scale, num_classes)
        self.trunk = TransformerTrunk(hidden, depth, num_heads, vocab_size)

    def forward(self, z: Tensor, t: float | Tensor, cond: Tensor | None = None) -> Tensor:
        """Logits (B, L, vocab_size) of q(x0 | x_t = z, t) for latents z (B, L, latent_dim), L <= seq_len."""
        if z.ndim != 3 or not 1 <= z.shape[1] <= self.seq_len or z.shape[2] != self.latent_dim:
            raise ValueError(
                f"LatentTransformer expected latents of shape (B, L, {self.latent_dim}) with 1 <= L <= {self.seq_len}, "
                f"got {tuple(z.shape)}"
                + ("; token ids go through the process's encoder first (process.corrupt)" if z.ndim == 2 else "")
            )
        if not z.is_floating_point():
            raise ValueError(f"LatentTransformer expects floating latents, got dtype {z.dtype}")
        h = self.proj(z.to(self.proj.weight.dtype)) + self.pos[:, : z.shape[1]]
        return self.trunk(h, self.cond_embed(t, cond, z.shape[0]))
