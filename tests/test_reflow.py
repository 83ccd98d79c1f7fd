"""Reflow (THEORY §8.1; Liu et al. 2022): paired noise in the data path, reflow pairs, straightness, the loader.

The properties: the trainer corrupts each sample with its own paired noise
row; the reflow pairs are the model's ODE endpoints of their prior draws;
straightness matches its closed form on a Gaussian (whose rectified-flow
paths are rays travelled at varying speed); and one reflow step on a 2-D toy
makes the flow much straighter and its 1-step Euler samples much better.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import udm
from udm.config import ConfigError, validate
from udm.data import Dataset, load_dataset
from udm.metrics import sliced_wasserstein
from udm.theory.gmm import GaussianMixture
from udm.training import Experiment, Trainer, load_trained
from udm.training.reflow import reflow_dataset, reflow_pairs, straightness
from udm.training.checkpoint import CheckpointError
from udm.training.trainer import step_seed


def rf_config(data: dict, name: str = "rf", steps: int = 10, **train) -> dict:
    """A rectified-flow MLP run on 2-D points (velocity prediction)."""
    return validate({
        "name": name,
        "seed": 0,
        "data": data,
        "process": {"name": "rectified_flow"},
        "prediction": {"name": "velocity"},
        "network": {"name": "mlp", "hidden": 64, "depth": 3, "emb_dim": 64},
        "train": {"steps": steps, "batch_size": 256, "lr": 2e-3, "log_every": 100, "ckpt_every": 100000,
                  "ema": {"decay": 0.99}, **train},
        "sample": {"sampler": "euler", "steps": 4, "n": 16, "eval_n": 100},
    })


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A rectified-flow run on eight Gaussians, trained for a few steps (enough to load and sample)."""
    out = tmp_path_factory.mktemp("reflow") / "rf1"
    Trainer(rf_config({"name": "eight_gaussians", "n": 500}, steps=5), out, progress=False).train()
    return out


def reflow_config(run: Path, **options) -> dict:
    data = {"name": "reflow", "run": str(run), "pairs": 300, "sampler": "euler", "steps": 4, "seed": 5, **options}
    return rf_config(data, name="rf2", steps=3, batch_size=64)


# --- (c) the Dataset's paired noise -----------------------------------------------------------------------


def test_dataset_checks_and_keeps_paired_noise() -> None:
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match=r"noise must have the shape of x, \(10, 3\).*got \(10, 2\)"):
        Dataset(x, None, None, "points", "d", noise=torch.randn(10, 2))
    with pytest.raises(ValueError, match=r"noise must have the shape of x.*got \(9, 3\)"):
        Dataset(x, None, None, "points", "d", noise=torch.randn(9, 3))
    bad = torch.randn(10, 3)
    bad[4, 1] = float("nan")
    with pytest.raises(ValueError, match="noise has non-finite.*sample 4"):
        Dataset(x, None, None, "points", "d", noise=bad)
    with pytest.raises(ValueError, match="noise must be a floating tensor"):
        Dataset(x, None, None, "points", "d", noise=torch.zeros(10, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="paired noise only applies to float data"):
        Dataset(torch.zeros(10, 3, dtype=torch.int64), None, None, "tokens", "d", noise=torch.randn(10, 3))

    noise = torch.randn(10, 3, dtype=torch.float64)
    d = Dataset(x, torch.arange(10) % 2, None, "points", "d", noise=noise)
    assert d.noise.dtype == x.dtype and "paired noise" in repr(d)
    for idx in ([7, 2, 2], torch.arange(10) % 3 == 0, slice(3, 8)):
        sub = d.subset(idx)
        pos = torch.arange(10)[idx] if not isinstance(idx, list) else torch.tensor(idx)
        assert torch.equal(sub.x, x[pos]) and torch.equal(sub.noise, noise[pos].float())
    train, test = d.split(0.3, seed=1)
    for part in (train, test):  # each row keeps its own noise through the shuffled split
        rows = [int(torch.nonzero((x == r).all(1))[0]) for r in part.x]
        assert torch.equal(part.noise, noise[rows].float())
    assert Dataset(x, None, None, "points", "d").noise is None


# --- reflow pairs and straightness on an exact field -----------------------------------------------------


def test_pairs_and_straightness_of_a_gaussian_match_closed_forms() -> None:
    """Data N(0, s^2 I), prior N(0, I): the exact flow is x_t = r(t) x1 with r(t) = sqrt((1-t)^2 s^2 + t^2).

    So the ODE maps x1 to x0 = s x1, and S = E|x1|^2 ∫_0^1 (r'(t) - (1 - s))^2 dt: straight rays, uneven speed.
    """
    s, d = 0.3, 2
    process = udm.get_process("rectified_flow")
    den = GaussianMixture([1.0], [[0.0] * d], [s * s]).denoiser(process, "velocity")
    x0, x1 = reflow_pairs(den, 200, shape=(d,), seed=3, batch_size=64, rtol=1e-7, atol=1e-7)
    assert x0.shape == x1.shape == (200, d)
    assert torch.allclose(x0, s * x1, atol=2e-4), "the rk45 endpoint of x1 must be s x1"
    assert torch.equal(x1[70], torch.randn(d, generator=torch.Generator().manual_seed(73), dtype=torch.float64).float())

    data = reflow_dataset(den, 200, shape=(d,), seed=3, batch_size=200, rtol=1e-7, atol=1e-7, name="g")
    assert data.kind == "points" and torch.equal(data.noise, x1)
    assert torch.allclose(data.x, x0, atol=1e-4), "rk45's adaptive steps depend on the batch, its endpoints only on the tolerance"

    t = torch.linspace(0.0, 1.0, 200001, dtype=torch.float64)
    dr = ((1 + s * s) * t - s * s) / torch.sqrt((1 - t) ** 2 * s * s + t * t)  # r'(t)
    exact = float(x1.double().pow(2).sum(1).mean()) * float(torch.trapezoid((dr - (1 - s)) ** 2, t))
    assert exact > 0.05
    assert straightness(den, x1, steps=2000) == pytest.approx(exact, rel=0.01)

    one_point = GaussianMixture([1.0], [[0.5, -1.0]], [0.0]).denoiser(process, "x0")
    assert straightness(one_point, x1, steps=50) < 1e-5, "every path to a single point is a straight line"


def test_straightness_is_the_path_integral_along_euler() -> None:
    """The streaming identity equals the direct sum h ||(x1 - x0) - v_i||^2 over a stored Euler trajectory."""
    torch.manual_seed(0)
    net = udm.nets.NETWORKS.get("mlp")(shape=2, hidden=32, depth=2)
    den = udm.Denoiser(net, udm.get_process("rectified_flow"), "velocity").eval()
    x1 = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    steps, x, vs = 8, x1, []
    with torch.no_grad():
        for i in range(steps):
            v = den.predict(x, 1.0 - i / steps, "velocity")
            vs.append(v)
            x = x - v / steps
    direct = sum(((x1 - x) - v).double().pow(2).sum(1) / steps for v in vs).mean()
    assert straightness(den, x1, steps=steps) == pytest.approx(float(direct), rel=1e-6)


def test_reflow_needs_a_flow_that_starts_from_pure_noise() -> None:
    vp = udm.get_process("vp")
    den = GaussianMixture([1.0], [[0.0, 0.0]], [0.1]).denoiser(vp, "eps")
    with pytest.raises(ValueError, match=r"alpha\(t_max\) = 0.*rectified_flow"):
        reflow_pairs(den, 4, shape=(2,))
    with pytest.raises(ValueError, match="rectified_flow"):
        straightness(den, torch.randn(4, 2))
    rf = GaussianMixture([1.0], [[0.0, 0.0]], [0.1]).denoiser(udm.get_process("rectified_flow"), "velocity")
    with pytest.raises(ValueError, match="give steps for sampler 'euler'"):
        reflow_pairs(rf, 4, shape=(2,), sampler="euler")


# --- (d) the reflow loader through a config, and (a) the trainer's use of the paired noise ------------------


def test_reflow_loader_round_trip_through_a_config(tiny_run: Path) -> None:
    full = load_dataset("reflow", run=str(tiny_run), pairs=300, sampler="euler", steps=4, seed=5)
    den, _ = load_trained(str(tiny_run))
    with torch.no_grad():
        expected = udm.sample(den, "euler", 4, shape=(300, 2), seeds=range(5, 305))
    assert full.name == "reflow(rf1)" and full.kind == "points" and full.x.shape == full.noise.shape == (300, 2)
    assert torch.allclose(full.x, expected, atol=1e-6), "x must be the model's ODE samples from the paired noise"

    config = reflow_config(tiny_run)
    exp = Experiment.from_config(config)
    assert len(exp.train_data) + len(exp.test_data) == 300
    for part in (exp.train_data, exp.test_data):
        rows = [int(torch.nonzero((full.x == r).all(1))[0]) for r in part.x]
        assert torch.equal(part.noise, full.noise[rows])

    with pytest.raises(ConfigError, match=r"data\.pair'.*allowed: .*pairs.*run"):
        validate({**config, "data": {"name": "reflow", "run": str(tiny_run), "pair": 10}})
    with pytest.raises(ValueError, match="no checkpoint"):
        load_dataset("reflow", run=str(tiny_run / "missing"))


def test_trainer_uses_the_paired_noise_rows(tiny_run: Path, tmp_path: Path) -> None:
    trainer = Trainer(reflow_config(tiny_run), tmp_path / "rf2", progress=False)
    full = load_dataset("reflow", run=str(tiny_run), pairs=300, sampler="euler", steps=4, seed=5)
    calls = []

    class Recording:
        def __init__(self, inner) -> None:
            self.inner = inner

        def __getattr__(self, key):
            return getattr(self.inner, key)

        def __call__(self, denoiser, x0, cond, **kw):
            calls.append((x0, kw["t"], kw["eps"]))
            return self.inner(denoiser, x0, cond, **kw)

    trainer.loss = Recording(trainer.loss)
    for step in (0, 5):
        calls.clear()
        trainer.accumulate_gradients(step)
        (x0, t, eps), = calls
        idx = trainer.batch_indices(step)
        assert torch.equal(x0, trainer.train_x[idx]) and torch.equal(eps, trainer.train_noise[idx])
        rows = [int(torch.nonzero((full.x == r).all(1))[0]) for r in x0]
        assert torch.equal(eps, full.noise[rows]), "each sample must be corrupted with its own x1"
        gen = torch.Generator().manual_seed(step_seed(trainer.config["seed"], step, 2))
        t_drawn, _, eps_drawn = trainer.loss.draw(trainer.process, x0, gen)
        assert torch.equal(t, t_drawn), "times are still drawn per step"
        assert not torch.equal(eps, eps_drawn)
        x_t = trainer.process.corrupt(x0, t, eps)
        assert torch.allclose(x_t, (1 - t[:, None]).float() * x0 + t[:, None].float() * eps, atol=1e-6)
    assert trainer.train(steps=3)["steps"] == 3


# --- (b) one reflow step straightens a trained flow ----------------------------------------------------------------


def test_reflow_straightens_the_flow_and_improves_one_step_samples(tmp_path: Path) -> None:
    """1-rectified flow on eight Gaussians, then the 2-rectified flow (same budget, from its weights)."""
    steps = 600
    first = Trainer(rf_config({"name": "eight_gaussians", "n": 4000}, steps=steps), tmp_path / "rf1", progress=False)
    first.train()
    data = {"name": "reflow", "run": str(tmp_path / "rf1"), "pairs": 2000, "sampler": "rk45", "seed": 1, "test_fraction": 0.05}
    second = Trainer(rf_config(data, name="rf2", steps=steps, init_from=str(tmp_path / "rf1")), tmp_path / "rf2", progress=False)
    for own, source in zip(second.net.state_dict().values(), first.ema.module.state_dict().values()):
        torch.testing.assert_close(own, source, rtol=0, atol=0)  # train.init_from: the 1-rectified EMA weights
    second.train()

    ref = load_dataset("eight_gaussians", n=2000, seed=7).x
    x1 = torch.randn(2000, 2, generator=torch.Generator().manual_seed(11))
    result = {}
    for name, run in (("1-RF", "rf1"), ("2-RF", "rf2")):
        den, _ = load_trained(str(tmp_path / run))
        with torch.no_grad():
            one_step = udm.sample(den, "euler", 1, x_T=x1)
        result[name] = straightness(den, x1, steps=50), float(sliced_wasserstein(one_step, ref))
    print("straightness, 1-step SW:", result)
    (s1, sw1), (s2, sw2) = result["1-RF"], result["2-RF"]
    assert s1 > 0.3 and s2 < 0.1 * s1, "reflow must straighten the paths"
    assert sw2 < 0.5 * sw1 and sw2 < 0.25, "1-step Euler samples of the reflowed model must be much closer to the data"


def test_init_from_needs_a_run_of_the_same_architecture(tiny_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="init_from"):
        Trainer(rf_config({"name": "eight_gaussians", "n": 500}, init_from=str(tmp_path / "nothing")), tmp_path / "a", progress=False)
    wider = rf_config({"name": "eight_gaussians", "n": 500}, init_from=str(tiny_run))
    wider["network"]["hidden"] = 32
    with pytest.raises(CheckpointError, match="do not fit this model"):
        Trainer(wider, tmp_path / "b", progress=False)
