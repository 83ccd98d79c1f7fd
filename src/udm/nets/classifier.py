"""A time-conditioned classifier network: ``forward(x, t) -> (B, num_classes)`` logits (THEORY §2.2, G1).

The trunk is the encoder half of the denoising networks, so a noise-aware
classifier sees x_t and the noise level exactly as a denoiser does:

* images (C, H, W): :class:`~udm.nets.unet.UNetEncoder` (down path and middle,
  ADM's classifier), then GroupNorm, SiLU, global average pooling, linear;
* anything else: :class:`~udm.nets.mlp.MLPEncoder`, then LayerNorm, SiLU, linear.

``num_classes`` is the number of outputs; the network takes no class input,
so it has no null label (``null_class`` is None) and label dropout never
applies to it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .embeddings import Network
from .mlp import MLPEncoder
from .unet import UNetEncoder, group_norm

Tensor = torch.Tensor


class Classifier(Network):
    """Logits of p(y | x_t, t) from a UNet-encoder (images) or residual-MLP (vectors) trunk.

    ``channels`` is the UNet base width, or the MLP's hidden width; ``depth``
    counts the MLP's residual blocks (images use ``channel_mult`` and
    ``num_res_blocks`` instead).
    """

    predicts = "y"
    #: No class input, so no null label: label dropout never applies.
    null_class = None

    def __init__(
        self,
        shape: Sequence[int],
        num_classes: int,
        channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        attn_resolutions: Sequence[int] = (),
        depth: int = 3,
        dropout: float = 0.0,
        time_embedding: str = "sinusoidal",
        time_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        if num_classes < 2:
            raise ValueError(f"a classifier needs num_classes >= 2, got {num_classes}")
        self.num_classes = int(num_classes)
        if len(self.shape) == 3:
            if self.shape[1] != self.shape[2]:
                raise ValueError(f"the image classifier takes square images, got shape {self.shape}")
            self.trunk: nn.Module = UNetEncoder(
                self.shape[0], self.shape[1], channels, channel_mult, num_res_blocks, attn_resolutions, dropout,
                time_embedding=time_embedding, time_scale=time_scale,
            )
            width = self.trunk.width
            self.head = nn.Sequential(group_norm(width), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
        else:
            self.trunk = MLPEncoder(self.shape, channels, depth, time_embedding=time_embedding, time_scale=time_scale, dropout=dropout)
            self.head = nn.Sequential(nn.LayerNorm(channels), nn.SiLU(), nn.Linear(channels, num_classes))

    def forward(self, x: Tensor, t: float | Tensor, cond: Tensor | None = None) -> Tensor:
        """(B, num_classes) logits at (x, t)."""
        if cond is not None:
            raise ValueError("a classifier network takes no class condition (the labels are its targets)")
        h = self.trunk.features(x, t)
        return self.head(h[0] if isinstance(h, tuple) else h)
