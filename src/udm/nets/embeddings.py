"""Embeddings of the noise-level input t and of class labels, shared by every network.

Networks know nothing about diffusion processes: ``t`` is whatever noise-level
input the caller feeds (a time in [0, 1], an integer-valued DDPM step in
[0, 1000], EDM's c_noise = log(sigma)/4, ...). Each embedding sees
``t * time_scale``, so one ``time_scale`` puts any of these ranges where the
sinusoidal or Fourier frequencies resolve it.

Class labels use ``num_classes + 1`` rows: row ``num_classes`` is the reserved
*null class* that classifier-free guidance trains and samples with; ``cond=None``
means "every sample is null".
"""

from __future__ import annotations

import math

import torch
from torch import nn

Tensor = torch.Tensor

TIME_EMBEDDINGS = ("sinusoidal", "fourier")


def time_vector(t: float | Tensor, batch: int, device: torch.device) -> Tensor:
    """``t`` as a floating tensor of shape (batch,): a scalar is broadcast, (B, 1, ...) is flattened.

    Integer inputs become float32; floating inputs keep their dtype (at least
    float32, so a bfloat16 t of 999 is not rounded to 1000 before embedding).
    """
    t = torch.as_tensor(t, device=device)
    if not t.is_floating_point() or t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    if t.ndim == 0:
        return t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"t must be a scalar or have shape ({batch},) to match the batch, got shape {tuple(t.shape)}")
    return t.reshape(batch)


class SinusoidalEmbedding(nn.Module):
    """Transformer positional encoding of a real number (Vaswani et al. 2017; DDPM's timestep embedding).

    e(t) = [cos(t w_0), ..., cos(t w_{h-1}), sin(t w_0), ..., sin(t w_{h-1})],
    w_i = max_period^(-i/h), h = dim // 2; an odd ``dim`` gets one zero column.
    """

    def __init__(self, dim: int, max_period: float = 10000.0) -> None:
        super().__init__()
        if dim < 2:
            raise ValueError(f"embedding dim must be >= 2, got {dim}")
        self.dim = dim
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64) / half)
        self.register_buffer("freqs", freqs.float(), persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        """(B,) -> (B, dim), computed in t's dtype (float32 or wider)."""
        args = t[:, None] * self.freqs.to(t.dtype)[None, :]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if self.dim % 2:
            emb = nn.functional.pad(emb, (0, 1))
        return emb


class FourierEmbedding(nn.Module):
    """Random Fourier features with fixed Gaussian frequencies (NCSN++ / EDM noise embedding).

    e(t) = [sin(2 pi w t), cos(2 pi w t)], w ~ N(0, scale^2) drawn once and kept
    as a buffer (saved with the weights, never trained).
    """

    def __init__(self, dim: int, scale: float = 16.0) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"Fourier embedding dim must be even and >= 2, got {dim}")
        self.dim = dim
        self.register_buffer("freqs", torch.randn(dim // 2) * scale)

    def forward(self, t: Tensor) -> Tensor:
        """(B,) -> (B, dim), computed in t's dtype (float32 or wider)."""
        args = (2 * math.pi) * t[:, None] * self.freqs.to(t.dtype)[None, :]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class TimeEmbedding(nn.Module):
    """Embedding of ``t * time_scale`` (sinusoidal or Fourier) followed by Linear-SiLU-Linear.

    Output shape (B, hidden_dim), in the dtype of the MLP weights.
    """

    def __init__(self, dim: int, hidden_dim: int, kind: str = "sinusoidal", time_scale: float = 1.0) -> None:
        super().__init__()
        if kind == "sinusoidal":
            self.embed: nn.Module = SinusoidalEmbedding(dim)
        elif kind == "fourier":
            self.embed = FourierEmbedding(dim)
        else:
            raise ValueError(f"unknown time embedding {kind!r}; valid: {', '.join(TIME_EMBEDDINGS)}")
        self.kind = kind
        self.time_scale = float(time_scale)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, hidden_dim))

    def forward(self, t: Tensor) -> Tensor:
        """(B,) floating -> (B, hidden_dim)."""
        emb = self.embed(t * self.time_scale)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class ClassEmbedding(nn.Module):
    """Class-label embedding with a reserved null class (row ``num_classes``) for classifier-free guidance.

    Labels must lie in [0, num_classes]; ``num_classes`` itself is the null label.
    The range check is skipped while ``torch.compile`` traces (it needs the
    values on the host); eager mode always checks.
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.null_class = num_classes
        self.embedding = nn.Embedding(num_classes + 1, dim)

    def forward(self, cond: Tensor | None, batch: int) -> Tensor:
        """(B,) integer labels (or None = all null) -> (B, dim)."""
        if cond is None:
            cond = torch.full((batch,), self.null_class, dtype=torch.long, device=self.embedding.weight.device)
        else:
            cond = torch.as_tensor(cond, device=self.embedding.weight.device)
            if cond.is_floating_point() or cond.is_complex() or cond.dtype == torch.bool:
                raise ValueError(f"class labels must be an integer tensor, got dtype {cond.dtype}")
            if cond.ndim == 0:
                cond = cond.expand(batch)
            if cond.shape != (batch,):
                raise ValueError(f"class labels must have shape ({batch},) to match the batch, got {tuple(cond.shape)}")
            if cond.numel() and not torch.compiler.is_compiling():
                lo, hi = (int(v) for v in torch.aminmax(cond))
                if lo < 0 or hi > self.null_class:
                    bad = lo if lo < 0 else hi
                    raise ValueError(
                        f"class label {bad} is out of range: labels must be in [0, {self.null_class}] "
                        f"({self.num_classes} classes plus the null label {self.null_class})"
                    )
        return self.embedding(cond)


class ConditionEmbedding(nn.Module):
    """The conditioning vector every network injects: TimeEmbedding(t) + ClassEmbedding(cond).

    With ``num_classes=None`` there is no class embedding and passing a ``cond``
    is an error (silently ignoring it would train an unconditional model).
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        kind: str = "sinusoidal",
        time_scale: float = 1.0,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.time = TimeEmbedding(dim, hidden_dim, kind=kind, time_scale=time_scale)
        self.classes = None if num_classes is None else ClassEmbedding(num_classes, hidden_dim)

    @property
    def null_class(self) -> int | None:
        """The null label (``num_classes``), or None without a class embedding."""
        return None if self.classes is None else self.classes.null_class

    def forward(self, t: float | Tensor, cond: Tensor | None, batch: int) -> Tensor:
        """(B, hidden_dim) conditioning vector for noise level ``t`` and labels ``cond``."""
        emb = self.time(time_vector(t, batch, self.time.mlp[0].weight.device))
        if self.classes is not None:
            emb = emb + self.classes(cond, batch)
        elif cond is not None:
            raise ValueError(
                "got a class condition, but this network was built without a class embedding "
                "(num_classes=None); build it with num_classes=K to condition on labels"
            )
        return emb


class Network(nn.Module):
    """What every udm network declares, so objectives and the trainer read it instead of probing for it.

    ``predicts`` is what the output estimates: ``"x0"`` (a parameterization of
    x0, or logits over its tokens) for denoisers, ``"y"`` for classifiers; an
    objective trains only networks that predict what it needs.
    ``num_classes`` is the number of class labels the network reads (None:
    unconditional) and :attr:`null_class` the label that means "no class"
    (classifier-free guidance, THEORY §2.2 G4), from the network's
    :class:`ConditionEmbedding` ``cond_embed``.
    """

    predicts = "x0"
    num_classes: int | None = None
    cond_embed: ConditionEmbedding

    @property
    def null_class(self) -> int | None:
        """The null label for classifier-free guidance (None without a class embedding)."""
        return self.cond_embed.null_class
