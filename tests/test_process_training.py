"""The non-Gaussian processes through the user's path: losses, configs, the trainer, checkpoints and the CLI.

The processes themselves are tested in test_cold, test_discrete and
test_encoder; here the question is whether the generic training and sampling
machinery (one loss per kind of output, one trainer, one sampler loop)
serves them without special cases, and whether bad input fails clearly.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import udm
import udm.cli
from udm.config import ConfigError, load_config
from udm.denoiser import TokenDenoiser
from udm.objectives import OBJECTIVES, CrossEntropyLoss, DenoisingLoss, make_loss
from udm.theory.discrete import EnumeratedSequences
from udm.training import Experiment, Trainer, load_trained
from udm.training.checkpoint import load_checkpoint

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "udm" / "configs"
SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"
needs_text = pytest.mark.skipif(not SHAKESPEARE.is_file(), reason=f"Tiny Shakespeare not found at {SHAKESPEARE}")


def _toy(vocab: int = 3, length: int = 3) -> EnumeratedSequences:
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(vocab**length, generator=g, dtype=torch.float64) ** 3
    return EnumeratedSequences(probs / probs.sum(), vocab, length)


class _Uniform(torch.nn.Module):
    """Constant logits: q(x0 | x_t) uniform over ``width`` columns."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width

    def forward(self, x, t, cond=None):
        return torch.zeros(*x.shape, self.width)


@pytest.mark.parametrize("name", ["mask", "edit"])
def test_cross_entropy_of_uniform_logits_is_log_v(name: str) -> None:
    """Uniform logits give CE = log V at every counted position (the mask column is not a token)."""
    process = udm.get_process(name, vocab_size=5, seq_len=6, schedule="linear")
    width = getattr(process, "input_vocab_size", 5)
    x0 = torch.randint(0, 5, (64, 6), generator=torch.Generator().manual_seed(1))
    t = torch.linspace(0.05, 1.0, 64, dtype=torch.float64)
    eps = process.sample_noise(x0.shape, torch.Generator().manual_seed(2))
    out = CrossEntropyLoss("uniform")(TokenDenoiser(_Uniform(width), process), x0, t=t, eps=eps)
    counted = process.corrupt(x0, t, eps) == process.vocab_size if name == "mask" else torch.ones_like(x0, dtype=torch.bool)
    expected = torch.where(counted.any(1), math.log(5), 0.0)  # a sequence with nothing masked carries no loss
    assert int(counted.any(1).sum()) > 48
    torch.testing.assert_close(out.objective, expected.float(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("schedule", ["count", "linear"])
def test_elbo_loss_with_exact_marginals_is_the_nll(schedule: str) -> None:
    """With the exact conditionals p(x0_i | x_t), the ELBO-weighted loss averages to -log p(x0) / L (THEORY §4.4).

    For the absorbing process the bound is tight at the optimum (random-order
    autoregression), so E_t,eps[objective] equals the per-token NLL; the
    Monte-Carlo mean must agree within 4 standard errors.
    """
    toy = _toy()
    process = udm.get_process("mask", vocab_size=3, seq_len=3, schedule=schedule)
    marginals = toy.posterior_marginals(process)

    class Net(torch.nn.Module):
        def forward(self, x, t, cond=None):
            return marginals(x, t)

    x0 = toy.sequences[toy.probs.argmax()].expand(40_000, 3).clone()
    out = CrossEntropyLoss("elbo")(TokenDenoiser(Net(), process), x0, generator=torch.Generator().manual_seed(3))
    nll = -math.log(float(toy.probs.max())) / 3
    mean, se = float(out.objective.mean()), float(out.objective.std()) / math.sqrt(len(x0))
    slack = 3 * process.t_eps if schedule == "linear" else 0.0  # the ELBO leaves out t < t_eps
    assert abs(mean - nll) < 4 * se + slack, (mean, nll, se)


def test_l1_restoration_loss() -> None:
    """norm='l1' is mean |x0_hat - x0| for the x0 prediction (the cold-diffusion loss, THEORY §4.2)."""
    process = udm.get_process("blur_dct", timesteps=10, blur_max=4.0)
    conv = torch.nn.Conv2d(1, 1, 3, padding=1)
    denoiser = udm.Denoiser(lambda x, t: conv(x), process, "x0")
    x0 = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.arange(1, 9, dtype=torch.float64)
    eps = torch.zeros_like(x0)
    out = DenoisingLoss(norm="l1")(denoiser, x0, t=t, eps=eps)
    expected = (denoiser(process.corrupt(x0, t, eps), t) - x0).abs().flatten(1).mean(1)
    torch.testing.assert_close(out.per_sample, expected)
    with pytest.raises(ValueError, match="l1 norm takes weighting 'target'"):
        DenoisingLoss("eps", norm="l1")


def test_make_loss_and_denoiser_follow_the_prediction() -> None:
    process = udm.get_process("mask", vocab_size=4, seq_len=4)
    assert isinstance(make_loss("logits", "elbo"), CrossEntropyLoss)
    assert isinstance(make_loss("x0", None), DenoisingLoss)
    assert isinstance(OBJECTIVES.get("cross_entropy")({"name": "logits"}).model(_Uniform(5), process), TokenDenoiser)
    with pytest.raises(ValueError, match="use TokenDenoiser"):
        udm.Denoiser(_Uniform(5), process, "logits")
    with pytest.raises(ValueError, match="not an affine function"):
        udm.to_x0(torch.zeros(2, 4, 5), torch.zeros(2, 4), 1.0, process, "logits")


def test_token_denoiser_checks_the_logit_shape() -> None:
    process = udm.get_process("mask", vocab_size=4, seq_len=4)
    with pytest.raises(ValueError, match=r"needs logits of shape \(2, 4, 5\)"):
        TokenDenoiser(_Uniform(4), process)(torch.zeros(2, 4, dtype=torch.long), 1.0)


# --- configs and the trainer ------------------------------------------------------------------------------------


def _tiny(name: str, **over) -> dict:
    overrides = {"train.steps": 6, "train.batch_size": 16, "train.log_every": 2, "train.ckpt_every": 3, "sample.n": 4}
    overrides.update(over)
    return load_config(CONFIGS / f"{name}.yaml", overrides)


def _tiny_text(name: str, **over) -> dict:
    return _tiny(name, **{"data.seq_len": 8, "data.limit": 400, "network.hidden": 32, "network.depth": 1, "sample.steps": 8, **over})


@needs_text
@pytest.mark.parametrize("name", ["text_mask", "text_edit", "text_encoder"])
def test_token_configs_train_resume_and_sample(tmp_path: Path, name: str) -> None:
    """Each token config trains, resumes bit-exactly, writes text samples, and its checkpoint samples tokens."""
    config = _tiny_text(name, **{"train.sample_every": 6})
    straight = Trainer(config, tmp_path / "a", progress=False)
    straight.train()
    half = Trainer(config, tmp_path / "b", progress=False)
    half.train(3)
    resumed = Trainer(config, tmp_path / "b", resume=True, progress=False)
    resumed.train()
    for key, value in straight.net.state_dict().items():
        assert torch.equal(value, resumed.net.state_dict()[key]), key
    assert (tmp_path / "a" / "samples" / "step_0000006.txt").read_text().count("--- sample") == 4
    resolved = load_checkpoint(tmp_path / "a").config
    assert resolved["process"]["vocab_size"] == 65 and resolved["network"]["seq_len"] == 8
    denoiser, _ = load_trained(str(tmp_path / "a"))
    x = udm.sample(denoiser, resolved["sample"]["sampler"], 8, shape=(3, 8), seeds=[0, 1, 2])
    assert x.dtype == torch.int64 and x.shape == (3, 8) and int(x.min()) >= 0 and int(x.max()) < 65


@pytest.mark.parametrize("name", ["demo_blur", "demo_fade", "demo_pool"])
def test_cold_configs_fit_a_prior_and_train(tmp_path: Path, name: str) -> None:
    """Cold configs fit the GMM prior on the training data, write it into the config, and sample from it."""
    trainer = Trainer(_tiny(name, **{"train.sample_every": 6}), tmp_path, progress=False)
    trainer.train()
    section = trainer.config["process"]
    assert len(section["prior_weights"]) >= 1 and len(section["prior_means"][0]) == 1
    assert (tmp_path / "samples" / "step_0000006.png").is_file()
    denoiser, ckpt = load_trained(str(tmp_path))
    x = udm.sample(denoiser, "udm_baseline", ckpt.config["sample"]["steps"], shape=(2, 1, 8, 8), seeds=[0, 1])
    assert x.shape == (2, 1, 8, 8) and bool(torch.isfinite(x).all())


# --- bad input ---------------------------------------------------------------------------------------------------


def test_blur_kernel_too_large_for_the_images() -> None:
    config = _tiny("demo_blur", **{"process.kernel_size": 27})
    with pytest.raises(ConfigError, match="process 'blur' cannot take data.*kernel"):
        Experiment.from_config(config)


@needs_text
def test_sequence_longer_than_the_context() -> None:
    config = _tiny_text("text_mask", **{"network.seq_len": 4})
    with pytest.raises(ConfigError, match="1 <= L <= 4"):
        Experiment.from_config(config)
    config = _tiny_text("text_mask", **{"process.seq_len": 4})
    with pytest.raises(ConfigError, match="has length 8 but process .mask. has seq_len=4"):
        Experiment.from_config(config)


def test_token_id_outside_the_vocabulary() -> None:
    process = udm.get_process("mask", vocab_size=4, seq_len=4)
    x0 = torch.tensor([[0, 1, 2, 7]])
    with pytest.raises(ValueError, match="token id 7"):
        process.corrupt(x0, 2, process.sample_noise(x0.shape))
    net = udm.nets.SequenceTransformer(5, 4, hidden=16, depth=1)
    with pytest.raises(ValueError, match="token id 7 is out of range"):
        net(x0, torch.zeros(1))


def test_demo_process_names_are_checked(capsys) -> None:
    assert udm.cli.main(["demo", "--process", "nope", "--out", "/tmp/never"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "blur" in err and not Path("/tmp/never").exists()
