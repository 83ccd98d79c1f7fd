"""``digits-mlp``: a small MLP trained by udm on the training part of scikit-learn's 8x8 digits.

linear 64 -> 128 - batch norm - ReLU (the features) - linear 128 -> 10 (the
logits); 9,866 float32 weights and batch-norm statistics. The batch norm
(running statistics at inference) keeps all 128 feature units alive, as in
``mnist-cnn`` (without it 17 never fire on any digit).

Trained on the training part of udm's split of the digits,
``digits().split(0.1, seed=0)`` (1617 images; the 180 held-out ones are the
split every digits config and foreign-model evaluation uses, so they stay
unseen), for 60 epochs of Adam, batch 64, learning rate 3e-3 decaying
linearly to 0, seed 0. The digits' 17 grey levels pass through the same 8-bit
quantization as every input. ``scripts/train_feature_nets.py digits-mlp``
rebuilds the shipped file byte for byte in seconds.
"""

from __future__ import annotations

from torch import nn

from ..data import Dataset, digits
from .base import ShippedClassifier
from .training import train_classifier

#: SHA-256 of weights/digits-mlp.safetensors
SHA256 = "b4d94ac858e7959a71d32f899c1d8a4624a02df67539005fcb62da048183ebb7"
#: the split of the digits the network is trained on: ``digits().split(TEST_FRACTION, seed=SPLIT_SEED)[0]``
TEST_FRACTION, SPLIT_SEED = 0.1, 0


class DigitsMLP(ShippedClassifier):
    """The ``digits-mlp`` feature network (see the module docstring)."""

    name = "digits-mlp"
    sha256 = SHA256
    weights_file = "digits-mlp.safetensors"
    training_split = f"scikit-learn digits, training part of udm.data.digits().split({TEST_FRACTION}, seed={SPLIT_SEED}) (1617 images)"
    feature_layer = "hidden layer: linear 64 -> 128 -> batch norm (running statistics) -> ReLU on the flattened image"
    feature_dim = 128
    input_shape = (1, 8, 8)
    recipe = {"optimizer": "Adam", "lr": 3e-3, "lr_schedule": "linear to 0", "epochs": 60, "batch_size": 64, "seed": 0}

    def __init__(self) -> None:
        super().__init__(nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.BatchNorm1d(128), nn.ReLU()), nn.Linear(128, 10))

    @classmethod
    def training_data(cls) -> Dataset:
        """The training part of udm's 90/10 split of the digits."""
        return digits().split(TEST_FRACTION, seed=SPLIT_SEED)[0]


def train(*, pinned: bool = True) -> DigitsMLP:
    """A new ``digits-mlp`` trained from scratch (seconds); see :func:`udm.features.training.train_classifier`."""
    return train_classifier(DigitsMLP, pinned=pinned)
