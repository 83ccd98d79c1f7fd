"""A residual MLP for vectors and 2-D points (toy data, low-dimensional experiments)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .embeddings import ConditionEmbedding, Network

Tensor = torch.Tensor


class _MLPBlock(nn.Module):
    """h + W2 dropout(SiLU(W1 LayerNorm(h) + P SiLU(emb))): a pre-norm residual block with the conditioning added."""

    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.emb = nn.Linear(hidden, hidden)
        self.act = nn.SiLU()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        z = self.act(self.fc1(self.norm(h)) + self.emb(emb))
        return h + self.fc2(self.drop(z))


class MLPEncoder(Network):
    """The trunk of :class:`MLP`: x flattened, lifted to ``hidden`` features, ``depth`` residual blocks.

    ``features(x, t, cond)`` returns the (B, hidden) features after the last
    block; a classifier puts its own head on them.
    """

    def __init__(
        self,
        shape: int | tuple[int, ...],
        hidden: int = 256,
        depth: int = 4,
        emb_dim: int = 128,
        time_embedding: str = "sinusoidal",
        time_scale: float = 1.0,
        num_classes: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.shape = (shape,) if isinstance(shape, int) else tuple(int(s) for s in shape)
        if not self.shape or any(s < 1 for s in self.shape):
            raise ValueError(f"shape must be a non-empty tuple of positive sizes, got {shape!r}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.cond_embed = ConditionEmbedding(emb_dim, hidden, time_embedding, time_scale, num_classes)
        self.num_classes = num_classes
        self.inp = nn.Linear(math.prod(self.shape), hidden)
        self.blocks = nn.ModuleList(_MLPBlock(hidden, dropout) for _ in range(depth))
        self.width = hidden

    def features(self, x: Tensor, t: float | Tensor, cond: Tensor | None = None) -> Tensor:
        """The (B, hidden) features at (x, t, cond)."""
        if x.ndim != len(self.shape) + 1 or tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"{type(self).__name__} expected input of shape (B, {', '.join(map(str, self.shape))}), got {tuple(x.shape)}")
        batch = x.shape[0]
        emb = nn.functional.silu(self.cond_embed(t, cond, batch))
        h = self.inp(x.reshape(batch, -1))
        for block in self.blocks:
            h = block(h, emb)
        return h


class MLP(MLPEncoder):
    """Residual MLP ``forward(x, t, cond=None)`` for inputs of shape (B, *shape); output has x's shape.

    x is flattened, lifted to ``hidden`` features, passed through ``depth``
    residual blocks that each add a projection of the time(+class) embedding,
    and projected back. The output layer starts at zero, so an untrained
    network predicts 0 (the mean of eps or of centred data).
    """

    def __init__(
        self,
        shape: int | tuple[int, ...],
        hidden: int = 256,
        depth: int = 4,
        emb_dim: int = 128,
        time_embedding: str = "sinusoidal",
        time_scale: float = 1.0,
        num_classes: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(shape, hidden, depth, emb_dim, time_embedding, time_scale, num_classes, dropout)
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, math.prod(self.shape)))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: Tensor, t: float | Tensor, cond: Tensor | None = None) -> Tensor:
        """The network output at (x, t, cond), shape (B, *shape)."""
        return self.out(self.features(x, t, cond)).reshape(x.shape)
