"""Post-hoc EMA (Karras et al. 2024, EDM2, Sec. 3 / App. C): power-function EMAs, snapshots, exact resume, reconstruction.

The runs are the tiny two-moons MLP of test_training.py with constant
learning rate 1e-3 (no warm-up, no decay: the weights keep moving to the
end, the harder case for a reconstruction).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from torch import nn

from test_cli import assert_one_line_error, run_cli
from test_faults import listing, poison
from test_training import all_state, tiny_config
from udm.config import SIGMA_REL_MAX
from udm.errors import CheckpointError, ConfigError
from udm.training import (
    Experiment,
    PowerEMA,
    Trainer,
    gamma_to_sigma_rel,
    load_checkpoint,
    reconstruct_posthoc,
    sigma_rel_to_gamma,
    write_posthoc,
)
from udm.training.ema import power_weights
from udm.training.posthoc import list_snapshots, profile_inner, snapshot_path, solve_coefficients


def run_config(steps: int, posthoc: dict | None, **overrides) -> dict:
    """The tiny run with constant lr 1e-3 and ``train.posthoc_ema: posthoc``."""
    return tiny_config(**{
        "train.steps": steps, "train.lr": 1e-3, "train.warmup_steps": 0, "train.lr_schedule": "constant", "train.log_every": 50,
        "train.ckpt_every": 100, "train.posthoc_ema": posthoc, **overrides,
    })


def posthoc_config(sigma_rels, every: int, steps: int, **overrides) -> dict:
    """The tiny run tracking ``sigma_rels`` with a snapshot every ``every`` steps."""
    return run_config(steps, {"sigma_rels": sigma_rels, "every": every}, **overrides)


def relative_error(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """||a - b|| / ||b|| over all tensors together (float64)."""
    assert a.keys() == b.keys()
    num = sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in b)
    den = sum(float((b[k].double() ** 2).sum()) for k in b)
    return math.sqrt(num / den)


def profile(tensors: dict[str, torch.Tensor], sigma_rel: float) -> dict[str, torch.Tensor]:
    prefix = f"{float(sigma_rel)!r}/"
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


# --- the power function ------------------------------------------------------------------------------------------------
def test_sigma_rel_and_gamma_round_trip_with_edm2s_values():
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.9722, abs=1e-4)  # EDM2's two tracked widths
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.9372, abs=1e-4)
    assert sigma_rel_to_gamma(SIGMA_REL_MAX) == pytest.approx(0.0, abs=1e-12), "1/sqrt(12) is the uniform average, gamma 0"
    for s in np.geomspace(1e-3, SIGMA_REL_MAX, 25):
        assert gamma_to_sigma_rel(sigma_rel_to_gamma(s)) == pytest.approx(s, rel=1e-12)
    for g in (0.0, 0.5, 3.0, 16.97, 1e4):
        assert sigma_rel_to_gamma(gamma_to_sigma_rel(g)) == pytest.approx(g, rel=1e-9, abs=1e-12)
    for bad in (0.0, -0.1, 0.29, math.nan):
        with pytest.raises(ValueError, match="sigma_rel must be in"):
            sigma_rel_to_gamma(bad)


class Scalars(nn.Module):
    """A 'network' whose weights are one vector, set by hand to one-hot vectors."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(n))


@pytest.mark.parametrize("sigma_rel", [0.05, 0.10, 0.25])
def test_power_ema_weights_are_the_integrals_of_the_continuous_profile(sigma_rel):
    """theta_k = e_k after step k: the average after step t is the weight vector, which must be int_{k-1}^{k} p_t."""
    n = 40
    net = Scalars(n)
    ema = PowerEMA(net, sigma_rel)
    gamma = ema.gamma
    for k in range(1, n + 1):
        with torch.no_grad():
            net.theta.copy_(torch.nn.functional.one_hot(torch.tensor(k - 1), n).float())
        ema.update(net)
        if k in (1, 7, n):
            weights = ema.module.theta.detach().double().numpy()[:k]
            assert weights.sum() == pytest.approx(1.0, abs=1e-6) and not ema.module.theta[k:].any()
            integrals = [quad(lambda tau: (gamma + 1) * tau**gamma / k ** (gamma + 1), j - 1, j, epsabs=0, epsrel=1e-13, limit=200)[0]
                         for j in range(1, k + 1)]
            np.testing.assert_allclose(weights, integrals, rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(power_weights(k, gamma), integrals, rtol=1e-10, atol=1e-15)
    assert ema.updates == n and ema.init_share == 0.0 and ema.module.theta.dtype == torch.float32


def test_profile_inner_products_and_coefficients():
    pairs = [(30.0, 6.94, 50.0, 16.97), (50.0, 16.97, 30.0, 6.94), (7.0, 0.0, 7.0, 3.5), (1e6, 10.3, 9e5, 6.94)]
    for t_a, g_a, t_b, g_b in pairs:
        p = lambda tau, t, g: (g + 1) * tau**g / t ** (g + 1)  # noqa: E731
        exact = quad(lambda tau: p(tau, t_a, g_a) * p(tau, t_b, g_b), 0, min(t_a, t_b), epsabs=0, limit=200)[0]
        assert float(profile_inner(t_a, g_a, t_b, g_b)) == pytest.approx(exact, rel=1e-9)
    # a tracked profile is its own reconstruction, with residual 0, constrained or not
    ts, gammas = [10, 10, 20, 20, 30, 30], [16.97, 6.94] * 3
    for sum_to_one in (True, False):
        x, residual = solve_coefficients(ts, gammas, 30, 6.94, sum_to_one=sum_to_one)
        np.testing.assert_allclose(x, [0, 0, 0, 0, 0, 1], atol=1e-8)
        assert residual < 1e-6
    x, residual = solve_coefficients(ts, gammas, 30, 10.29)
    assert x.sum() == pytest.approx(1.0, abs=1e-12) and 1e-4 < residual < 0.1


# --- training: snapshots, state, exact resume --------------------------------------------------------------------------
#: steps and snapshot interval of the acceptance runs (40 snapshots per tracked width, one every 2.5% of the run)
STEPS, EVERY = 200, 5


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run A tracks 0.05 and 0.10, run B the width 0.075 directly; same seed and config otherwise."""
    root = tmp_path_factory.mktemp("posthoc")
    Trainer(posthoc_config([0.05, 0.10], EVERY, STEPS), root / "A", progress=False).train()
    Trainer(posthoc_config([0.075], EVERY, STEPS), root / "B", progress=False).train()
    return root / "A", root / "B"


def test_reconstruction_equals_a_width_tracked_directly_in_training(runs):
    """Reconstructing width 0.075 from run A's snapshots of 0.05 and 0.10 gives run B's directly tracked 0.075.

    Measured relative L2 error of all weights (this run: 200 steps, constant lr
    1e-3; constrained fit sum x = 1 / free fit; profile residual):

    ========================  ===========  ==========  ========
    snapshot every (n/width)  constrained  free        residual
    ========================  ===========  ==========  ========
    5 steps (40), this test   2.1e-7       2.2e-6      5.8e-4
    10 steps (20)             2.4e-6       3.4e-5      2.3e-3
    20 steps (10)             3.4e-5       5.0e-4      8.4e-3
    50 steps (4)              5.3e-4       1.1e-2      3.3e-2
    ========================  ===========  ==========  ========

    Only n = steps / every matters for the profile fit (the residual is the
    same at 400 or 800 steps for the same n); it falls as n^-2 and the
    constrained weight error about as n^-3.5, down to ~2e-7, the float32
    rounding of the tracked averages themselves (n = 80 and 160 stay at
    1.6e-7 and 2.2e-7). The free fit's error is its sum x - 1, which scales the
    whole weight vector: 7-20x worse for n <= 40, the same for n >= 80.
    """
    run_a, run_b = runs
    a, b = load_checkpoint(run_a), load_checkpoint(run_b)
    for name, value in a.group("model").items():
        assert torch.equal(value, b.group("model")[name]), "training is deterministic: the raw trajectories are the same"
    direct = profile(b.group("power_ema"), 0.075)
    rec = reconstruct_posthoc(run_a, [0.075])[0.075]
    assert rec.step == STEPS and rec.t == STEPS and rec.snapshot_steps == list(range(EVERY, STEPS + 1, EVERY))
    error = relative_error(rec.state, direct)
    assert error <= 1e-5, f"relative error {error:.2e}"
    free = relative_error(reconstruct_posthoc(run_a, [0.075], sum_to_one=False)[0.075].state, direct)
    assert error < free, "the constraint sum x = 1 is the better fit"
    assert 1e-4 < rec.residual < 2e-3 and sum(map(sum, rec.coefficients)) == pytest.approx(1.0, abs=1e-12)
    tracked = reconstruct_posthoc(run_a, [0.05, 0.10])
    for width in (0.05, 0.10):
        assert tracked[width].residual < 1e-6
        assert relative_error(tracked[width].state, profile(a.group("power_ema"), width)) < 1e-7


def test_checkpoints_and_snapshots_hold_the_tracked_widths(runs):
    run_a, _ = runs
    ckpt = load_checkpoint(run_a)
    assert ckpt.meta["posthoc_ema"] == {"sigma_rels": [0.05, 0.1], "gammas": [sigma_rel_to_gamma(0.05), sigma_rel_to_gamma(0.1)],
                                        "updates": STEPS}
    snaps = list_snapshots(run_a)
    assert [s.step for s in snaps] == list(range(EVERY, STEPS + 1, EVERY)) and all(s.updates == s.step for s in snaps)
    last = snapshot_path(run_a, STEPS)
    from safetensors.torch import load_file

    assert all(torch.equal(v, ckpt.group("power_ema")[k]) for k, v in load_file(last).items())


def test_resume_is_bitwise_exact_with_snapshots_and_power_ema(tmp_path):
    """12 steps, stop, resume to 25 == 25 straight: every tensor, the posthoc_ema record and every snapshot file's bytes.

    The network's Fourier time embedding has a buffer (its frequencies): averages copy it, and so does a reconstruction.
    """
    cfg = posthoc_config([0.05, 0.15], 3, 25, **{"train.ckpt_every": 10, "network.time_embedding": "fourier"})
    Trainer(cfg, tmp_path / "straight", progress=False).train()
    Trainer(cfg, tmp_path / "split", progress=False).train(steps=12)
    Trainer(cfg, tmp_path / "split", resume=True, progress=False).train()
    a, b = all_state(tmp_path / "straight"), all_state(tmp_path / "split")
    assert a.keys() == b.keys() and any(k.startswith("power_ema/") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
    assert load_checkpoint(tmp_path / "straight").meta["posthoc_ema"] == load_checkpoint(tmp_path / "split").meta["posthoc_ema"]
    straight, split = listing(tmp_path / "straight" / "posthoc_ema"), listing(tmp_path / "split" / "posthoc_ema")
    assert list(straight) == [f"snapshot_{s:07d}.safetensors" for s in range(3, 25, 3)] and straight == split
    buffers = list_snapshots(tmp_path / "split")[-1].buffers
    rec = reconstruct_posthoc(tmp_path / "split", [0.1])[0.1]
    raw = load_checkpoint(tmp_path / "split").group("model")
    assert buffers and all(torch.equal(rec.state[name], raw[name]) for name in buffers)


def test_stale_snapshots_are_removed_on_resume_and_written_again(tmp_path, capsys):
    """A run killed after its snapshots of steps 21 and 24 but before its checkpoint at 25 resumes from 20 without them."""
    run = tmp_path / "run"
    Trainer(posthoc_config([0.1], 3, 25, **{"train.ckpt_every": 10}), run, progress=False).train()
    before = listing(run / "posthoc_ema")
    shutil.rmtree(run / "checkpoints" / "step_0000025")
    (run / "checkpoints" / "latest").write_text("step_0000020")
    (run / "posthoc_ema" / ".snapshot_0000027.safetensors.x1y2.tmp").write_bytes(b"half")
    capsys.readouterr()
    trainer = Trainer(posthoc_config([0.1], 3, 25, **{"train.ckpt_every": 10}), run, resume=True, progress=False)
    err = capsys.readouterr().err
    assert "removed 2 post-hoc EMA snapshot(s) after step 20" in err and ".snapshot_0000027.safetensors.x1y2.tmp" in err
    assert sorted(listing(run / "posthoc_ema")) == [f"snapshot_{s:07d}.safetensors" for s in range(3, 20, 3)]
    trainer.train()
    assert listing(run / "posthoc_ema") == before, "the rerun writes the removed snapshots again, bitwise"


def test_a_skipped_step_is_no_step_of_the_profile(tmp_path, monkeypatch):
    poison(monkeypatch, {1, 4})
    Trainer(posthoc_config([0.1], 2, 6, **{"train.on_nonfinite": "skip"}), tmp_path, progress=False).train()
    assert [(s.step, s.updates) for s in list_snapshots(tmp_path)] == [(2, 1), (4, 3), (6, 4)]
    assert load_checkpoint(tmp_path).meta["posthoc_ema"]["updates"] == 4


# --- config ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value, fragment",
    [
        ([0.05], "'train.posthoc_ema' must be a mapping"),
        ({"every": 5, "widths": [0.1]}, "'train.posthoc_ema.widths' is not allowed"),
        ({"sigma_rels": [0.1]}, "'train.posthoc_ema.every' is missing"),
        ({"every": 0}, "'train.posthoc_ema.every' must be an integer >= 1"),
        ({"every": 2.5}, "'train.posthoc_ema.every' must be an integer >= 1"),
        ({"every": 5, "sigma_rels": []}, "'train.posthoc_ema.sigma_rels' must be a non-empty list"),
        ({"every": 5, "sigma_rels": 0.1}, "'train.posthoc_ema.sigma_rels' must be a non-empty list"),
        ({"every": 5, "sigma_rels": [0.1, 0.3]}, "holds 0.3; each width must be a number in (0, 0.2887]"),
        ({"every": 5, "sigma_rels": [0.0]}, "holds 0.0"),
        ({"every": 5, "sigma_rels": [True]}, "holds True"),
        ({"every": 5, "sigma_rels": [0.1, 0.10]}, "lists a width twice"),
    ],
)
def test_posthoc_config_refusals_name_the_key(value, fragment):
    with pytest.raises(ConfigError) as info:
        tiny_config(**{"train.posthoc_ema": value})
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_posthoc_config_defaults():
    assert tiny_config()["train"]["posthoc_ema"] is None
    assert tiny_config(**{"train.posthoc_ema": {"every": 7}})["train"]["posthoc_ema"] == {"sigma_rels": [0.05, 0.1], "every": 7}
    assert tiny_config(**{"train.posthoc_ema": {"every": 7, "sigma_rels": [0.2, 0.05]}})["train"]["posthoc_ema"]["sigma_rels"] == [0.05, 0.2]


@pytest.mark.parametrize("other", [{"sigma_rels": [0.05, 0.2], "every": 2}, {"sigma_rels": [0.05, 0.1], "every": 3}, None])
def test_resume_with_another_posthoc_ema_is_refused(tmp_path, other):
    """The tracked widths (and the snapshot interval) are part of the run: every average needs the whole trajectory."""
    Trainer(posthoc_config([0.05, 0.1], 2, 4), tmp_path, progress=False).train()
    before = listing(tmp_path)
    with pytest.raises(CheckpointError, match=r"different config \(train\.posthoc_ema[.:].*; resume with the same config"):
        Trainer(run_config(8, other), tmp_path, resume=True, progress=False)
    assert listing(tmp_path) == before


# --- udm ema ---------------------------------------------------------------------------------------------------------
def test_udm_ema_refuses_bad_input_in_one_line_and_writes_nothing(runs, tmp_path, capsys):
    run_a, _ = runs
    plain = tmp_path / "plain"
    Trainer(tiny_config(**{"train.steps": 2}), plain, progress=False).train()
    cases = [
        ((str(plain), "--sigma-rel", "0.1"), [f"run {plain} has no post-hoc EMA snapshots",
                                               "train with train.posthoc_ema: {sigma_rels: [...], every: N}"]),
        ((str(tmp_path / "none"), "--sigma-rel", "0.1"), ["does not exist"]),
        ((str(run_a), "--sigma-rel", "0.1,0.3"), ["--sigma-rel: 0.3 is out of range", "(0, 0.2887]"]),
        ((str(run_a), "--sigma-rel", "0.1,x"), ["--sigma-rel: 'x' is not a number"]),
        ((str(run_a), "--sigma-rel", "0.1", "--step", "7"), ["step 7 of run", "has no post-hoc EMA snapshot", "choose the step of a snapshot"]),
        ((str(run_a), "--sigma-rel", "0.1", "--step", "5"), ["has 1 post-hoc EMA snapshot(s) up to step 5", "needs at least 2"]),
    ]
    before = listing(tmp_path), listing(run_a)
    for argv, fragments in cases:
        code, out, err = run_cli(capsys, "ema", *argv)
        assert_one_line_error(code, err, *fragments)
        assert out == ""
    assert (listing(tmp_path), listing(run_a)) == before


def test_udm_ema_writes_checkpoints_that_sample_and_load(runs, tmp_path, capsys):
    run_a, _ = runs
    out = tmp_path / "ema"
    code, stdout, err = run_cli(capsys, "ema", str(run_a), "--sigma-rel", "0.075,0.15", "--step", "100", "--out", str(out))
    assert code == 0, err
    lines = stdout.splitlines()
    folder = out / "sigma_rel_0.075" / "step_0000100"
    assert len(lines) == 2 and lines[0].startswith("sigma_rel 0.075  gamma 10.29  step 100  snapshots 20 (steps 5..100)  residual ")
    assert lines[0].endswith(str(folder)) and lines[1].endswith(str(out / "sigma_rel_0.150" / "step_0000100"))
    ckpt = load_checkpoint(out / "sigma_rel_0.075")
    record = ckpt.meta["posthoc_ema"]
    assert ckpt.path == folder and record["sigma_rel"] == 0.075 and record["snapshot_steps"] == list(range(5, 101, 5))
    assert record["raw_weights"]["step"] == 100 and len(record["coefficients"]) == 20 and 0 < record["residual"] < 0.01
    assert ckpt.config == load_checkpoint(run_a).config
    rec = reconstruct_posthoc(run_a, [0.075], step=100)[0.075]
    assert all(torch.equal(rec.state[k], v) for k, v in ckpt.group("ema").items())
    exp = Experiment.from_run(str(out / "sigma_rel_0.075"))
    assert all(torch.equal(exp.net.state_dict()[k], v) for k, v in rec.state.items())
    code, stdout, err = run_cli(capsys, "sample", str(out / "sigma_rel_0.075"), "--n", "4", "--quiet")
    assert code == 0, err
    assert "note" not in err, "a power-function average holds no initialisation: no warm-up note"
    samples = [Path(p) for p in stdout.split()]
    assert samples and all(p.exists() and folder.parent in p.parents for p in samples)
    # the library functions write the default place: RUN/posthoc_ema/sigma_rel_*
    paths = write_posthoc(run_a, reconstruct_posthoc(run_a, [0.1]))
    assert paths[0.1] == run_a / "posthoc_ema" / "sigma_rel_0.100" / f"step_{STEPS:07d}"
    assert json.loads((paths[0.1] / "state.json").read_text())["posthoc_ema"]["residual"] < 1e-6
