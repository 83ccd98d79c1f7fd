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
    """A classifier fit on real digits labels >= 75% of 500 samples with p >= 0.9; class histogram TV <= 0.15."""
    trainer, x, _ = train_and_sample("demo_digits", tmp_path, None, False, n=500)
    scores = classifier_scores(x, trainer.exp.train_data)
    print(f"confident fraction {scores['confident_fraction']:.3f}, class TV {scores['class_tv']:.3f}, histogram {scores['class_histogram']}")
    assert scores["confident_fraction"] >= 0.75
    assert scores["class_tv"] <= 0.15
