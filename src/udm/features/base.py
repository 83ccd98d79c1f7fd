"""The feature-network protocol: a frozen network that maps images to feature vectors for image-quality metrics.

Fréchet distance, KID and precision/recall compare two image sets through a
network's features, so a number is only reproducible together with the
network, its exact weights and its exact input transform. A
:class:`FeatureNetwork` therefore declares all of them as class attributes
(read directly, never probed): ``name``, ``sha256`` of its weights file
(checked at load), ``weights_file``, ``training_split``, ``input_transform``,
``feature_layer``, ``feature_dim``, ``num_classes`` (None: no logits) and
``input_shape`` (``(C, H, W)``, or None for any ``H x W`` image with 1 or 3
channels). :meth:`FeatureNetwork.protocol` returns them as one dict to print
beside a metric.

Inputs are udm image tensors ``(N, C, H, W)`` in [-1, 1] (or uint8 pixels).
Every network first quantizes them to 8 bits exactly as a saved PNG would
(:func:`udm.features.common.quantize`), then applies its own mapping
(:meth:`FeatureNetwork.prepare`), then runs ``batch_size`` images at a time,
so 10k images never sit in memory as network activations at once.

:class:`ShippedClassifier` is the part the two small networks udm trains
itself share (``mnist-cnn``, ``digits-mlp``): a trunk whose output is the
feature layer, a linear head giving 10 logits, weights shipped as
safetensors inside the package.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from ..data import Dataset, from_uint8
from ..errors import CheckpointError
from .common import WEIGHTS_DIR, check_sha256, quantize

Tensor = torch.Tensor


class FeatureNetwork(nn.Module):
    """A frozen image-to-features network; see the module docstring for the attributes every subclass declares."""

    name: str
    sha256: str
    weights_file: str
    training_split: str
    input_transform: str
    feature_layer: str
    feature_dim: int
    num_classes: int | None
    input_shape: tuple[int, int, int] | None
    #: images per forward pass
    batch_size: int = 500

    @classmethod
    def load(cls, device: torch.device | str | None = None) -> FeatureNetwork:
        """The network with its pinned weights (hash checked), in eval mode and without gradients, on ``device``."""
        raise NotImplementedError

    def prepare(self, pixels: Tensor) -> Tensor:
        """The network's own input mapping of a batch of uint8 pixels ``(n, C, H, W)`` on its device."""
        raise NotImplementedError

    def embed(self, inputs: Tensor) -> Tensor:
        """Features ``(n, feature_dim)`` of prepared inputs."""
        raise NotImplementedError

    def classify(self, features: Tensor) -> Tensor:
        """Logits ``(n, num_classes)`` from features; only networks with ``num_classes`` have them."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        """Where the network's weights live (inputs are moved there batch by batch)."""
        return next(self.parameters()).device

    def accepts(self, shape: tuple[int, ...]) -> bool:
        """Whether one image of ``shape`` ``(C, H, W)`` is this network's input."""
        return shape == tuple(self.input_shape)

    def expected_input(self) -> str:
        """The accepted image shape, as the wrong-shape message shows it."""
        return str(tuple(self.input_shape))

    def check_input(self, x: Tensor) -> None:
        """Raise a one-line ValueError unless ``x`` is a batch ``(N, C, H, W)`` of images this network accepts."""
        if not isinstance(x, Tensor):
            raise TypeError(f"feature network {self.name!r} takes a torch.Tensor of images, got {type(x).__name__}")
        got = tuple(x.shape[1:]) if x.ndim == 4 else tuple(x.shape)
        if x.ndim != 4 or not self.accepts(got):
            what = "" if x.ndim == 4 else f"a {x.ndim}-D tensor "
            raise ValueError(
                f"feature network {self.name!r} takes {self.expected_input()} images, got {what}{got}; "
                "pick a network for this data (udm list)"
            )
        if not (x.dtype == torch.uint8 or x.is_floating_point()):
            raise ValueError(f"feature network {self.name!r} takes float images in [-1, 1] or uint8 pixels, got {x.dtype}")

    def features(self, x: Tensor) -> Tensor:
        """Features ``(N, feature_dim)`` float64, on ``x``'s device, of images ``x`` ``(N, C, H, W)`` in [-1, 1] (or uint8)."""
        return self._batched(x, self.embed, self.feature_dim)

    def logits(self, x: Tensor) -> Tensor:
        """Class logits ``(N, num_classes)`` float64 of images ``x``; a ValueError for networks without classes."""
        if self.num_classes is None:
            raise ValueError(f"feature network {self.name!r} has no class logits; use one with num_classes set (udm list)")
        return self._batched(x, lambda inputs: self.classify(self.embed(inputs)), self.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """:meth:`features`."""
        return self.features(x)

    def _batched(self, x: Tensor, fn: Callable[[Tensor], Tensor], dim: int) -> Tensor:
        """``fn`` of the prepared, quantized images, ``batch_size`` at a time, gathered as float64 on ``x``'s device."""
        self.check_input(x)
        out = torch.empty(x.shape[0], dim, dtype=torch.float64, device=x.device)
        with torch.no_grad():
            for start in range(0, x.shape[0], self.batch_size):
                pixels = quantize(x[start : start + self.batch_size]).to(self.device)
                out[start : start + pixels.shape[0]] = fn(self.prepare(pixels)).to(out)
        return out

    def protocol(self) -> dict[str, Any]:
        """Everything a reader needs to reproduce a number computed on these features."""
        return {
            "name": self.name,
            "sha256": self.sha256,
            "weights_file": self.weights_file,
            "training_split": self.training_split,
            "input_transform": self.input_transform,
            "input_shape": None if self.input_shape is None else list(self.input_shape),
            "feature_layer": self.feature_layer,
            "feature_dim": self.feature_dim,
            "num_classes": self.num_classes,
        }


class ShippedClassifier(FeatureNetwork):
    """A small classifier udm trains itself (``scripts/train_feature_nets.py``): ``trunk`` -> features, ``head`` -> logits.

    The input mapping is udm's own: pixels ``b`` to ``b / 127.5 - 1``
    (:func:`udm.data.from_uint8`), the values the training data had.
    Subclasses build ``trunk`` and ``head`` in ``__init__`` (no arguments) and
    declare ``recipe`` (seed, epochs, batch size, learning rate: what
    :meth:`protocol` reports) and :meth:`training_data`.
    """

    num_classes = 10
    input_transform = "clamp to [-1, 1]; pixels b = uint8(round((x + 1) * 127.5)); network input b / 127.5 - 1 (float32)"
    recipe: dict[str, Any]

    @classmethod
    def training_data(cls) -> Dataset:
        """The labelled images the network is trained on (its ``training_split``)."""
        raise NotImplementedError

    def __init__(self, trunk: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head

    @classmethod
    def load(cls, device: torch.device | str | None = None) -> ShippedClassifier:
        """The shipped weights (``features/weights/<weights_file>``), hash checked, in a frozen network on ``device``."""
        path = WEIGHTS_DIR / cls.weights_file
        if not path.is_file():
            raise CheckpointError(
                f"weights of feature network {cls.name!r} are missing: {path} does not exist; "
                f"reinstall udm, or rebuild them with scripts/train_feature_nets.py {cls.name}"
            )
        check_sha256(path, cls.sha256, cls.name, f"reinstall udm, or rebuild it with scripts/train_feature_nets.py {cls.name}")
        net = cls()
        net.load_state_dict(load_file(path), strict=True)
        return net.to(device).eval().requires_grad_(False)

    def prepare(self, pixels: Tensor) -> Tensor:
        """Pixels ``b`` to ``b / 127.5 - 1``: the [-1, 1] values of the data the network was trained on."""
        return from_uint8(pixels)

    def embed(self, inputs: Tensor) -> Tensor:
        """The trunk's output: the post-ReLU feature layer."""
        return self.trunk(inputs)

    def classify(self, features: Tensor) -> Tensor:
        """The linear head: 10 class logits."""
        return self.head(features)

    def protocol(self) -> dict[str, Any]:
        """:meth:`FeatureNetwork.protocol` plus the training recipe that reproduces the weights."""
        return {**super().protocol(), "training": dict(self.recipe)}
