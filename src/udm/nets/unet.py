"""The image UNet of DDPM (Ho et al. 2020) with the ADM / DDPM++ options.

Layout (DDPM CIFAR-10 with the defaults, 35.7M parameters, the same count as
diffusers' ``UNet2DModel`` in that configuration):

* conv_in; per level i (width ``channels * channel_mult[i]``):
  ``num_res_blocks`` residual blocks, each followed by self-attention when the
  level's resolution is in ``attn_resolutions``, then a downsample (except the
  last level); every output is kept as a skip;
* middle: residual block, attention, residual block;
* per level in reverse: ``num_res_blocks + 1`` residual blocks on
  [h, skip] concatenated, attention as above, then an upsample (except level 0);
* GroupNorm, SiLU, conv_out (zero-initialised).

Options: ``scale_shift`` injects the embedding as ADM's adaptive GroupNorm,
GN(h) (1 + scale) + shift, instead of DDPM's additive bias (ADM, Dhariwal &
Nichol 2021; costs a Linear(emb, 2C) instead of Linear(emb, C) per block, +2.9M
parameters in the CIFAR-10 configuration); ``resblock_updown`` resamples inside
residual blocks (ADM / BigGAN); ``skip_rescale`` divides every residual sum by
sqrt(2) (NCSN++ / DDPM++, Song et al. 2021); ``norm_groups`` gives every
GroupNorm that many groups, as DDPM and diffusers' ``UNet2DModel``
(``norm_num_groups``) do, instead of :func:`num_groups` of each width (the
default, which differs from 32 below 128 channels); a UNet with one group
count is weight-compatible with ``UNet2DModel`` (``udm.interop.export``).

Odd sizes work: a stride-2 conv maps n to ceil(n / 2) and upsampling
interpolates to the size of the matching skip (28 -> 14 -> 7 -> 4 -> 7 -> 14 -> 28).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import ConditionEmbedding, Network
from .transformer import SelfAttention

Tensor = torch.Tensor


def num_groups(channels: int, max_groups: int = 32, min_group_size: int = 4) -> int:
    """GroupNorm groups: the largest divisor of ``channels`` <= min(32, channels / 4).

    32 groups at 128 or more channels (DDPM, ADM); 16 at 64, 8 at 32, so a
    group never shrinks below 4 channels and narrow networks do not degenerate
    into per-channel (instance) normalisation.
    """
    limit = max(1, min(max_groups, channels // min_group_size))
    return next(g for g in range(limit, 0, -1) if channels % g == 0)


def group_norm(channels: int, groups: int | None = None) -> nn.GroupNorm:
    """GroupNorm (eps 1e-6) with ``groups`` groups, by default :func:`num_groups` of the width."""
    return nn.GroupNorm(num_groups(channels) if groups is None else groups, channels, eps=1e-6)


def _half(n: int) -> int:
    """Spatial size after a stride-2 downsample (conv k3 s2 p1, or ceil-mode average pooling)."""
    return (n + 1) // 2


class Downsample(nn.Module):
    """3x3 convolution with stride 2 (n -> ceil(n / 2))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling to ``size`` (twice the input by default) followed by a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        size = size or (2 * x.shape[-2], 2 * x.shape[-1])
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class ResBlock(nn.Module):
    """Residual block: GN, SiLU, [resample], conv, inject emb, GN, SiLU, dropout, conv (zero-init), + skip.

    ``resample`` is None, "down" (2x2 average pooling, ceil mode) or "up"
    (nearest to ``size``); it is applied to both branches (ADM's up/down blocks).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        dropout: float = 0.0,
        scale_shift: bool = False,
        resample: str | None = None,
        skip_rescale: bool = False,
        norm_groups: int | None = None,
    ) -> None:
        super().__init__()
        if resample not in (None, "down", "up"):
            raise ValueError(f"resample must be None, 'down' or 'up', got {resample!r}")
        self.resample = resample
        self.scale_shift = scale_shift
        self.out_scale = 1 / math.sqrt(2) if skip_rescale else 1.0
        self.norm1 = group_norm(in_channels, norm_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_channels * (2 if scale_shift else 1))
        self.norm2 = group_norm(out_channels, norm_groups)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def _resample(self, x: Tensor, size: tuple[int, int] | None) -> Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2, ceil_mode=True)
        if self.resample == "up":
            return F.interpolate(x, size=size or (2 * x.shape[-2], 2 * x.shape[-1]), mode="nearest")
        return x

    def forward(self, x: Tensor, emb: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """``emb`` is the activated conditioning vector (B, emb_dim); ``size`` is the target of an "up" block."""
        h = F.silu(self.norm1(x))
        if self.resample is not None:
            h, x = self._resample(h, size), self._resample(x, size)
        h = self.conv1(h)
        e = self.emb(emb)[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.drop(F.silu(h)))
        return (self.skip(x) + h) * self.out_scale


class AttentionBlock(nn.Module):
    """Self-attention over the H*W positions: x + proj(SDPA(GN(x))), the output projection zero-initialised.

    The feature map is read as (B, H*W, C) tokens, which is a free view for
    channels_last tensors; the attention itself is :class:`SelfAttention`.
    """

    def __init__(self, channels: int, num_heads: int, skip_rescale: bool = False, norm_groups: int | None = None) -> None:
        super().__init__()
        self.out_scale = 1 / math.sqrt(2) if skip_rescale else 1.0
        self.norm = group_norm(channels, norm_groups)
        self.attn = SelfAttention(channels, num_heads)
        nn.init.zeros_(self.attn.proj.weight)
        nn.init.zeros_(self.attn.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, hh, ww = x.shape
        h = self.attn(self.norm(x).flatten(2).transpose(1, 2))
        return (x + h.transpose(1, 2).reshape(b, c, hh, ww)) * self.out_scale


class UNetEncoder(Network):
    """The down path and middle of the UNet below: ADM's classifier trunk, and the first half of :class:`UNet`.

    ``features(x, t, cond)`` returns the middle feature map, every skip of the
    down path and the activated conditioning vector; options as for :class:`UNet`.
    """

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 32,
        channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        num_heads: int | None = None,
        head_dim: int = 64,
        num_classes: int | None = None,
        time_embedding: str = "sinusoidal",
        time_scale: float = 1.0,
        resblock_updown: bool = False,
        skip_rescale: bool = False,
        scale_shift: bool = False,
        norm_groups: int | None = None,
    ) -> None:
        super().__init__()
        if not channel_mult or num_res_blocks < 1 or channels < 1:
            raise ValueError(
                f"need channels >= 1, num_res_blocks >= 1 and a non-empty channel_mult, "
                f"got channels={channels}, num_res_blocks={num_res_blocks}, channel_mult={tuple(channel_mult)}"
            )
        if num_heads is not None and num_heads < 1:
            raise ValueError(f"num_heads must be >= 1 or None, got {num_heads}")
        if norm_groups is not None and (norm_groups < 1 or any(channels * m % norm_groups for m in channel_mult)):
            raise ValueError(
                f"norm_groups must be >= 1 and divide every level width {[channels * m for m in channel_mult]}, got {norm_groups}"
            )
        self.in_channels = in_channels
        self.image_size = image_size
        self.num_classes = num_classes
        self.norm_groups = norm_groups
        self._res_options = {
            "emb_dim": 4 * channels, "dropout": dropout, "scale_shift": scale_shift, "skip_rescale": skip_rescale,
            "norm_groups": norm_groups,
        }
        self._num_heads, self._head_dim = num_heads, head_dim
        self.cond_embed = ConditionEmbedding(channels, 4 * channels, time_embedding, time_scale, num_classes)

        self.sizes = [image_size]
        for _ in channel_mult[1:]:
            self.sizes.append(_half(self.sizes[-1]))
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.down = nn.ModuleList()
        self.skip_channels = [channels]
        ch = channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [self.res(ch, channels * mult)]
                ch = channels * mult
                if self.sizes[level] in attn_resolutions:
                    layers.append(self.attn(ch))
                self.down.append(nn.ModuleList(layers))
                self.skip_channels.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(nn.ModuleList([self.res(ch, ch, "down") if resblock_updown else Downsample(ch)]))
                self.skip_channels.append(ch)
        self.mid = nn.ModuleList([self.res(ch, ch), self.attn(ch), self.res(ch, ch)])
        self.width = ch

    def res(self, cin: int, cout: int, resample: str | None = None) -> ResBlock:
        """A residual block with this network's embedding width and options."""
        return ResBlock(cin, cout, resample=resample, **self._res_options)

    def attn(self, ch: int) -> AttentionBlock:
        """Self-attention over ``ch`` channels with ``num_heads`` heads, or heads of about ``head_dim`` features."""
        heads = self._num_heads or max(h for h in range(1, max(1, ch // self._head_dim) + 1) if ch % h == 0)
        return AttentionBlock(ch, heads, self._res_options["skip_rescale"], self.norm_groups)

    @staticmethod
    def _run(layers: nn.ModuleList, h: Tensor, emb: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        for layer in layers:
            if isinstance(layer, ResBlock):
                h = layer(h, emb, size)
            elif isinstance(layer, Upsample):
                h = layer(h, size)
            else:
                h = layer(h)
        return h

    def features(self, x: Tensor, t: float | Tensor, cond: Tensor | None = None) -> tuple[Tensor, list[Tensor], Tensor]:
        """(middle features, skips of the down path, activated conditioning vector) at (x, t, cond)."""
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"{type(self).__name__} expected input of shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        emb = F.silu(self.cond_embed(t, cond, x.shape[0]))
        h = self.conv_in(x)
        skips = [h]
        for layers in self.down:
            h = self._run(layers, h, emb)
            skips.append(h)
        return self._run(self.mid, h, emb), skips, emb


class UNet(UNetEncoder):
    """DDPM / ADM-style UNet ``forward(x, t, cond=None)`` for images (B, in_channels, image_size, image_size).

    Level i has ``channels * channel_mult[i]`` channels and spatial size
    ``image_size`` halved (rounding up) i times; the time embedding has
    ``4 * channels`` features and sees ``t * time_scale``. ``num_heads`` fixes
    the number of attention heads; otherwise a layer of C channels uses the
    largest divisor of C that is <= C // head_dim (at least one). Attention
    resolutions that no level reaches are ignored, so the defaults also fit
    small images. ``out_channels`` defaults to ``in_channels``. ``norm_groups``
    fixes the number of GroupNorm groups everywhere (None: :func:`num_groups`
    of each width).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        image_size: int = 32,
        channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        num_heads: int | None = None,
        head_dim: int = 64,
        num_classes: int | None = None,
        time_embedding: str = "sinusoidal",
        time_scale: float = 1.0,
        resblock_updown: bool = False,
        skip_rescale: bool = False,
        scale_shift: bool = False,
        norm_groups: int | None = None,
    ) -> None:
        super().__init__(
            in_channels, image_size, channels, channel_mult, num_res_blocks, attn_resolutions, dropout, num_heads, head_dim,
            num_classes, time_embedding, time_scale, resblock_updown, skip_rescale, scale_shift, norm_groups,
        )
        self.out_channels = out_channels or in_channels
        skip_channels = list(self.skip_channels)
        ch = self.width
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [self.res(ch + skip_channels.pop(), channels * mult)]
                ch = channels * mult
                if self.sizes[level] in attn_resolutions:
                    layers.append(self.attn(ch))
                if level > 0 and i == num_res_blocks:
                    layers.append(self.res(ch, ch, "up") if resblock_updown else Upsample(ch))
                self.up.append(nn.ModuleList(layers))

        self.out = nn.Sequential(group_norm(ch, norm_groups), nn.SiLU(), nn.Conv2d(ch, self.out_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: Tensor, t: float | Tensor, cond: Tensor | None = None) -> Tensor:
        """The network output at (x, t, cond), same shape as x."""
        h, skips, emb = self.features(x, t, cond)
        for layers in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            target = tuple(skips[-1].shape[-2:]) if skips else None
            h = self._run(layers, h, emb, target)
        return self.out(h)
