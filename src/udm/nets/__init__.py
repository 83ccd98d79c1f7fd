"""Networks: ``forward(x, t, cond=None)`` maps a noisy input to an output of x's shape (logits for tokens).

The exception is the ``classifier``: it maps (x_t, t) to class logits.

Every network is a :class:`Network`: it declares ``predicts`` (``"x0"``, or
``"y"`` for the classifier), ``num_classes`` and ``null_class``. Networks
know nothing about diffusion processes. ``t`` is the noise-level
input the caller chooses (raw time, DDPM step, EDM's c_noise), embedded as
``t * time_scale``; ``cond`` is an optional LongTensor of class labels whose
value ``net.null_class`` (= num_classes) is the null label of classifier-free
guidance, and ``cond=None`` means all null.

| name                 | class                        | input                    |
|----------------------|------------------------------|--------------------------|
| mlp                  | :class:`MLP`                 | vectors / 2-D points     |
| unet                 | :class:`UNet`                | images (DDPM / ADM UNet) |
| dit                  | :class:`DiT`                 | images as patches        |
| sequence_transformer | :class:`SequenceTransformer` | token ids (B, L)         |
| latent_transformer   | :class:`LatentTransformer`   | latents (B, L, d) + encoder F (THEORY §4.5) |
| classifier           | :class:`Classifier`          | images or vectors -> (B, num_classes) logits (THEORY §2.2 G1) |
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from ..registry import Registry
from .classifier import Classifier
from .embeddings import ClassEmbedding, ConditionEmbedding, FourierEmbedding, Network, SinusoidalEmbedding, TimeEmbedding
from .latent import LatentTransformer, TokenEncoder
from .mlp import MLP, MLPEncoder
from .transformer import DiT, SelfAttention, SequenceTransformer, TransformerBlock, TransformerTrunk
from .unet import UNet, UNetEncoder

NETWORKS: Registry[Callable[..., nn.Module]] = Registry("network")
NETWORKS.register("mlp", MLP)
NETWORKS.register("unet", UNet)
NETWORKS.register("dit", DiT)
NETWORKS.register("sequence_transformer", SequenceTransformer)
NETWORKS.register("latent_transformer", LatentTransformer)
NETWORKS.register("classifier", Classifier)


def build_network(name: str, **kwargs) -> nn.Module:
    """The network registered as ``name`` built with ``kwargs``.

    Unknown or missing arguments raise a ValueError naming them and listing
    the constructor's arguments (configs are typed by hand, so a typo such as
    ``chanels=64`` must not surface as a TypeError from deep inside a class).
    """
    cls = NETWORKS.get(name)
    params = {k: p for k, p in inspect.signature(cls).parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    allowed = ", ".join(params)
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ValueError(f"unknown argument(s) {', '.join(map(repr, unknown))} for network {name!r}; allowed: {allowed}")
    missing = [k for k, p in params.items() if p.default is p.empty and k not in kwargs]
    if missing:
        raise ValueError(f"network {name!r} needs argument(s) {', '.join(map(repr, missing))}; allowed: {allowed}")
    return cls(**kwargs)


__all__ = [
    "NETWORKS",
    "MLP",
    "MLPEncoder",
    "Classifier",
    "ClassEmbedding",
    "ConditionEmbedding",
    "DiT",
    "FourierEmbedding",
    "LatentTransformer",
    "Network",
    "SelfAttention",
    "SequenceTransformer",
    "SinusoidalEmbedding",
    "TimeEmbedding",
    "TokenEncoder",
    "TransformerBlock",
    "TransformerTrunk",
    "UNet",
    "UNetEncoder",
    "build_network",
]
