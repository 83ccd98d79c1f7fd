"""``mnist-cnn``: a small CNN trained by udm on the MNIST training split, for feature distances on 28x28 digits.

conv 3x3 (1 -> 16) - max-pool 2 - ReLU - conv 3x3 (16 -> 32) - max-pool 2 - ReLU
- linear 1568 -> 128 - batch norm - ReLU (the features) - linear 128 -> 10 (the
logits); 207,178 float32 weights and batch-norm statistics, 0.8 MB.

* Pooling before the ReLU is the same function as after it (ReLU is
  monotone) on a quarter of the values: the pinned-numerics training is about
  15% faster.
* The batch norm (running statistics at inference) keeps every feature unit
  alive: without it the inputs of the feature layer, all non-negative and
  strongly correlated, switch about half of the 128 ReLUs off for every image
  (66 dead units after training), and the Fréchet distance would live in 62
  dimensions with singular covariances. It also brings one epoch to 99% test
  accuracy.

Trained on the 60,000 MNIST training images only (the 10,000 test images stay
unseen for evaluation) for 1 epoch of Adam, batch 128, learning rate 3e-3
decaying linearly to 0, seed 0 (:func:`udm.features.training.fit`); about 45 s
on one core with the pinned numerics. ``scripts/train_feature_nets.py
mnist-cnn`` rebuilds the shipped file byte for byte.
"""

from __future__ import annotations

from torch import nn

from ..data import Dataset, mnist
from .base import ShippedClassifier
from .training import train_classifier

#: SHA-256 of weights/mnist-cnn.safetensors
SHA256 = "2d408b17a4b9618108c7039fd174c96a2cd92d38496c1f1869828714680d875a"


class MnistCNN(ShippedClassifier):
    """The ``mnist-cnn`` feature network (see the module docstring)."""

    name = "mnist-cnn"
    sha256 = SHA256
    weights_file = "mnist-cnn.safetensors"
    training_split = "MNIST train split (60000 images; udm.data.mnist(split='train'))"
    feature_layer = "fc1 -> batch norm (running statistics) -> ReLU: 128 units on the flattened second conv block"
    feature_dim = 128
    input_shape = (1, 28, 28)
    recipe = {"optimizer": "Adam", "lr": 3e-3, "lr_schedule": "linear to 0", "epochs": 1, "batch_size": 128, "seed": 0}

    def __init__(self) -> None:
        trunk = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, 128),
            nn.BatchNorm1d(128),
            nn.ReLU(),
        )
        super().__init__(trunk, nn.Linear(128, 10))

    @classmethod
    def training_data(cls) -> Dataset:
        """The MNIST training split, found as :func:`udm.data.find_mnist` finds it."""
        return mnist(split="train")


def train(*, pinned: bool = True) -> MnistCNN:
    """A new ``mnist-cnn`` trained from scratch (under a minute on one core); see :func:`udm.features.training.train_classifier`."""
    return train_classifier(MnistCNN, pinned=pinned)
