"""Noise-aware classifiers (THEORY §2.2, G1): the network, the cross-entropy objective, and guidance with a trained one."""

from __future__ import annotations

import functools

import pytest
import torch

import udm
from udm.classifier import NoisyClassifier
from udm.config import ConfigError, validate
from udm.guidance import ClassifierGuidance
from udm.objectives import ClassificationLoss, make_loss
from udm.nets import Classifier
from udm.theory import GaussianMixture

F64 = torch.float64
GMM = GaussianMixture.isotropic([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], [0.5, 0.5])


@functools.cache
def _trained_gmm_classifier() -> NoisyClassifier:
    """A noise-aware VP classifier of GMM's two labelled components, trained by ClassificationLoss (fixed seeds)."""
    process = udm.get_process("vp")
    torch.manual_seed(0)
    model = NoisyClassifier(Classifier((2,), 2, channels=64, depth=2, time_scale=1000.0 / process.t_max), process)
    loss = make_loss("eps", objective="classification")
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(600):
        x0, y = GMM.sample(256, gen, return_labels=True)
        out = loss(model, x0.float(), y, gen)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    return model.eval()


def test_classifier_network_returns_logits_for_images_and_vectors() -> None:
    """Images go through the UNet encoder and a pooled head, vectors through the MLP trunk; no class input."""
    image = Classifier((1, 8, 8), 10, channels=16, channel_mult=(1, 2))
    assert image(torch.randn(3, 1, 8, 8), torch.rand(3)).shape == (3, 10)
    vector = Classifier((5,), 4, channels=16)
    assert vector(torch.randn(3, 5), torch.rand(3)).shape == (3, 4)
    assert vector.null_class is None
    with pytest.raises(ValueError, match="takes no class condition"):
        vector(torch.randn(3, 5), torch.rand(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="num_classes >= 2"):
        Classifier((5,), 1)


def test_trained_classifier_matches_the_bayes_posterior_at_every_noise_level() -> None:
    """Cross-entropy on x_t = F_t(x0, eps) learns p_t(y | x_t), which the labelled mixture gives in closed form (§2.3)."""
    process = udm.get_process("vp")
    model = _trained_gmm_classifier()
    gen = torch.Generator().manual_seed(5)
    for t in (0.05, 0.3, 0.6, 0.9):
        x0 = GMM.sample(2000, gen)
        x_t = process.corrupt(x0, torch.full((2000,), t, dtype=F64), torch.randn(2000, 2, generator=gen, dtype=F64))
        with torch.no_grad():
            learned = torch.softmax(model(x_t.float(), t).double(), -1)
        exact = GMM.class_probs(x_t, t, process)
        assert (learned - exact).abs().max(1).values.mean() < 0.05, t


def test_guidance_by_a_trained_classifier_draws_the_requested_component() -> None:
    """The exact unconditional model steered by the trained classifier (gamma = 1) lands in component y, like the exact one."""
    process = udm.get_process("vp")
    den = GMM.denoiser(process, "x0")
    model = _trained_gmm_classifier()
    y = torch.tensor([0, 1]).repeat_interleave(200)
    x_T = process.prior((400, 2), udm.rng.generators_from_seeds(range(400)), dtype=F64)
    guide = ClassifierGuidance(den, lambda x, t: model(x.float(), t).double(), gamma=1.0)
    x = udm.sample(guide, "heun", 30, x_T=x_T, cond=y)
    share = float(((x[:, 0] > 0).long() == y).double().mean())
    unguided = udm.sample(den, "heun", 30, x_T=x_T)
    assert share > 0.95 and abs(float((unguided[:, 0] > 0).double().mean()) - 0.5) < 0.1


def test_classifier_refuses_samples_of_another_shape() -> None:
    """A classifier of (1, 8, 8) images asked about 2-D points names both shapes."""
    model = NoisyClassifier(Classifier((1, 8, 8), 10, channels=8, channel_mult=(1,)), udm.get_process("vp"))
    with pytest.raises(ValueError, match=r"takes inputs of shape \(1, 8, 8\) but got \(2,\)"):
        model(torch.randn(4, 2), 0.5)


def test_classification_objective_needs_labels_and_takes_no_weighting() -> None:
    model = NoisyClassifier(Classifier((2,), 2, channels=8), udm.get_process("vp"))
    with pytest.raises(ValueError, match="needs class labels"):
        ClassificationLoss()(model, torch.randn(4, 2))
    with pytest.raises(ValueError, match="takes no loss weighting"):
        make_loss("eps", "min_snr", objective="classification")


@pytest.mark.parametrize(
    "network, loss, train, fragment",
    [
        ({"name": "mlp"}, {"objective": "classification"}, {}, "neither goes without the other"),
        ({"name": "classifier", "num_classes": 2}, {}, {}, "neither goes without the other"),
        ({"name": "classifier", "num_classes": 2}, {"objective": "classification"}, {"sample_every": 10}, "draws no samples"),
    ],
)
def test_classifier_config_errors(network, loss, train, fragment) -> None:
    config = {"name": "c", "data": {"name": "two_moons"}, "process": {"name": "vp"}, "network": network, "loss": loss, "train": train}
    with pytest.raises(ConfigError, match=fragment):
        validate(config)
