"""An objective or a process added from outside udm is one class and one registry line (docs/architecture.md).

`udm train` trains the objective; the process works with the kernels and the assembly layer at once.

The toy objective is the pseudo-Huber loss of consistency training (Song &
Dhariwal 2023, "Improved techniques for training consistency models", §3.3),
sqrt(||x0_hat - x0||^2 / d + c^2) - c on the denoiser's x0 estimate: robust
like L1 far from the target and smooth like L2 near it. Nothing in udm knows
its name; the test registers it, trains it through the CLI, rebuilds the run,
and checks the loss it was trained on went down on a fixed held-out batch.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import udm
from udm import rng
from udm.cli import main
from udm.losses import Loss, LossOutput
from udm.objectives import OBJECTIVES, Objective
from udm.processes import PROCESSES, Process
from udm.training import Experiment


class PseudoHuberLoss(Loss):
    """E_t w(t) [sqrt(||x0_hat - x0||^2 / d + c^2) - c] with x0_hat the denoiser's estimate at x_t = F_t(x0, eps)."""

    def __init__(self, time_sampler=None, c: float = 0.03) -> None:
        super().__init__(time_sampler)
        self.c = float(c)

    def at(self, denoiser, x0, cond, t, w, eps) -> LossOutput:
        process = denoiser.process
        x0_hat = denoiser(process.corrupt(x0, t, eps), t, cond)
        sq = (x0_hat.float() - x0.float()).pow(2).flatten(1).mean(1)
        objective = torch.sqrt(sq + self.c**2) - self.c
        per_sample = objective * w.to(objective.dtype)
        return LossOutput(per_sample.mean(), per_sample, t, w, objective.detach())


class PseudoHuber(Objective):
    """The toy objective's registry entry: a denoiser (the base class's model) trained by :class:`PseudoHuberLoss`."""

    name = "pseudo_huber"
    keys = ("time_sampler",)

    def build_loss(self) -> PseudoHuberLoss:
        return PseudoHuberLoss(self.options["time_sampler"])


@pytest.fixture
def registered():
    OBJECTIVES.register(PseudoHuber.name, PseudoHuber)
    yield
    OBJECTIVES.unregister(PseudoHuber.name)


CONFIG = {
    "name": "toy_objective",
    "seed": 3,
    "data": {"name": "two_moons", "n": 600, "test_fraction": 0.25},
    "process": {"name": "vp"},
    "prediction": {"name": "x0"},
    "network": {"name": "mlp", "hidden": 32, "depth": 2},
    "loss": {"objective": "pseudo_huber"},
    "train": {"steps": 100, "batch_size": 64, "lr": 3e-3, "log_every": 50, "ckpt_every": 100, "ema": None},
    "sample": {"sampler": "ddim", "steps": 4, "n": 8, "eval_n": 50},
}


def held_out_loss(exp: Experiment) -> float:
    """The pseudo-Huber loss of ``exp``'s model on its held-out points, times and noise fixed by one seed."""
    _, test = exp.splits()
    with torch.no_grad():
        out = exp.loss(exp.model(), test.x, generator=torch.Generator().manual_seed(11))
    return float(out.loss)


def test_a_toy_objective_registered_from_outside_trains_through_udm_train(tmp_path, capsys, registered) -> None:
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    torch.set_num_threads(1)
    initial = held_out_loss(Experiment.from_config(CONFIG))

    code = main(["train", str(path), "--out", str(tmp_path / "run"), "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["steps"] == 100

    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert recorded["loss"]["objective"] == "pseudo_huber"
    exp = Experiment.from_run(str(tmp_path / "run"), use_ema=False)
    assert isinstance(exp.objective, PseudoHuber) and isinstance(exp.loss, PseudoHuberLoss)
    assert isinstance(exp.model(), torch.nn.Module) and exp.model().prediction == "x0"
    trained = held_out_loss(exp)
    assert trained < 0.85 * initial, (initial, trained)

    code = main(["sample", str(tmp_path / "run"), "--out", str(tmp_path / "s")])
    assert code == 0 and (tmp_path / "s" / "samples.png").is_file()


def test_the_toy_objective_checks_its_keys_and_is_unknown_once_unregistered(tmp_path, capsys, registered) -> None:
    bad = {**CONFIG, "loss": {"objective": "pseudo_huber", "weighting": "min_snr"}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    assert main(["train", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "objective 'pseudo_huber' takes no loss weighting" in err and not (tmp_path / "run").exists()

    OBJECTIVES.unregister(PseudoHuber.name)
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(CONFIG))
    assert main(["train", str(tmp_path / "toy.yaml"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "unknown objective 'pseudo_huber'" in err and "denoising" in err
    OBJECTIVES.register(PseudoHuber.name, PseudoHuber)


class ScaledNoise(Process):
    """x_t = x0 + c t eps on t in [0, 1]: the docs' "add a process" example, written against the protocol only."""

    name = "scaled"

    def __init__(self, c: float = 10.0) -> None:
        self.c = float(c)

    def _ct(self, t, x):
        return self.c * torch.as_tensor(t, dtype=x.dtype).reshape(-1, *[1] * (x.ndim - 1))

    def corrupt(self, x0, t, eps):
        return x0 + self._ct(t, x0) * eps

    def recover_noise(self, x0, x_t, t, *, generator=None):
        return (x_t - x0) / self._ct(t, x0)

    def prior(self, shape, generator=None, *, dtype=torch.float32, device=None):
        return self.c * rng.randn(shape, generator, dtype=dtype, device=device)


def test_a_process_registered_from_outside_samples_with_the_kernels_and_builds_an_experiment() -> None:
    PROCESSES.register(ScaledNoise.name, ScaledNoise)
    try:
        process = udm.get_process("scaled", c=5.0)
        point = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
        exact = udm.Denoiser(lambda x, t: point.expand_as(x), process, "x0")  # data = one point: x0_hat is exact
        x = udm.sample(exact, "udm", steps=8, shape=(16, 2), seeds=range(16), dtype=torch.float64, kernel="K1")
        torch.testing.assert_close(x, point.expand(16, 2), rtol=0, atol=1e-12)
        with pytest.raises(ValueError, match="sampler 'heun' needs a linear process"):
            udm.sample(exact, "heun", steps=4, shape=(2, 2), seeds=range(2))
        exp = Experiment.from_config({**CONFIG, "process": {"name": "scaled", "c": 5.0}, "loss": {}})
        assert isinstance(exp.process, ScaledNoise) and exp.config["loss"]["objective"] == "denoising"
        assert exp.process.fit(exp.train_data.x, seed=0) == {} and exp.process.bind(exp.net) is exp.process
    finally:
        PROCESSES.unregister(ScaledNoise.name)
