"""`udm demo` end to end: the two-moons model reaches the two-sample floor; the digits UNet makes recognisable digits."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from udm.demo import run_demo, train_and_sample
from udm.evaluate import classifier_scores


def test_demo_two_moons_is_within_three_times_the_floor(tmp_path):
    metrics = run_demo(tmp_path, quick=True, progress=False)
    print(f"SW {metrics['sliced_wasserstein']:.4f}, floor {metrics['sliced_wasserstein_floor']:.4f}")
    assert metrics["n"] == 2000
    assert metrics["sliced_wasserstein"] <= 3.0 * metrics["sliced_wasserstein_floor"]
    assert json.loads((tmp_path / "metrics.json").read_text())["sliced_wasserstein"] == metrics["sliced_wasserstein"]
    for name in ("moons_samples.png", "moons_trajectories.png", "moons_loss.png"):
        with Image.open(tmp_path / name) as im:
            assert im.size[0] >= 300 and im.size[1] >= 200
            assert len(np.unique(np.asarray(im.convert("L")))) > 10, f"{name} looks blank"


@pytest.mark.slow
def test_digits_unet_makes_recognisable_balanced_digits(tmp_path):
    """The pinned digits classifier (digits-mlp) labels >= 75% of 500 samples with p >= 0.9; class histogram TV <= 0.15."""
    trainer, x, _ = train_and_sample("demo_digits", tmp_path, None, False, n=500)
    scores = classifier_scores(x)
    print(f"confident fraction {scores['confident_fraction']:.3f}, class TV {scores['class_tv']:.3f}, histogram {scores['class_histogram']}")
    assert scores["confident_fraction"] >= 0.75
    assert scores["class_tv"] <= 0.15


@pytest.mark.slow
def test_blur_improved_sampler_covers_the_classes_naive_collapses(tmp_path):
    """`udm demo --process blur` (THEORY §4.2): from the same prior images, TACoS (K1) keeps the prior's noise and
    yields recognisable digits of many classes; the naive re-degrading sampler (K0) throws that noise away at every
    step and collapses onto few classes (Su's information-loss critique, made visible)."""
    metrics = run_demo(tmp_path, progress=False, process="blur")
    naive, improved = metrics["naive"], metrics["improved"]
    print(f"naive: confident {naive['confident_fraction']:.3f}, TV {naive['class_tv']:.3f}; "
          f"improved: confident {improved['confident_fraction']:.3f}, TV {improved['class_tv']:.3f}")
    assert improved["confident_fraction"] >= 0.75
    assert improved["class_tv"] <= 0.3
    assert naive["class_tv"] >= improved["class_tv"] + 0.15
    with Image.open(tmp_path / "blur" / "naive_vs_improved.png") as im:
        assert len(np.unique(np.asarray(im.convert("L")))) > 10


@pytest.mark.parametrize("name", ["heat", "green", "pfgm", "pfgmpp"])
def test_ode_process_demos_reach_three_times_the_floor(tmp_path, name):
    """`udm demo --process NAME` for the ODE constructions (THEORY §5-§7), at a quarter of the bundled steps: samples within 3x
    the sliced-Wasserstein floor of eight Gaussians, and the plots written."""
    metrics = run_demo(tmp_path, steps=800, progress=False, process=name)
    print(f"{name}: SW {metrics['sliced_wasserstein']:.4f}, floor {metrics['sliced_wasserstein_floor']:.4f}")
    assert metrics["sliced_wasserstein"] <= 3.0 * metrics["sliced_wasserstein_floor"]
    for png in ("samples.png", "trajectories.png", "loss.png"):
        with Image.open(tmp_path / name / png) as im:
            assert len(np.unique(np.asarray(im.convert("L")))) > 10, f"{png} looks blank"
