"""Flow matching with any prior (THEORY §8): the library's samplers on exact fields, and training with non-Gaussian priors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import udm
from udm.config import load_config
from udm.metrics import sliced_wasserstein
from udm.processes.noise import UniformNoise
from udm.theory import ExactField, GaussianMixture, PointMasses, StraightLine
from udm.training import Trainer

F64 = torch.float64
CONFIGS = Path(__file__).resolve().parents[1] / "src" / "udm" / "configs"


def test_part15_demo_lands_with_the_right_fractions_and_never_crosses() -> None:
    """§8.3 item 1 through udm.sample: data {0.5, 0.5, 1.2, 1.7}, uniform prior on [0, 2], straight lines, exact field.

    The network is the C4 field itself (THEORY §8.2, with its 1e-8 floor, which keeps
    the velocity finite where a Heun predictor steps just outside the prior's support),
    read as a velocity prediction. 4000 uniform starts; landing fractions 0.5 / 0.25 / 0.25
    within 4 binomial standard errors; in 1-D no crossing means the order of the
    starts is kept at every step.
    """
    process = udm.get_process("rectified_flow", noise={"name": "uniform", "low": 0.0, "high": 2.0}, t_eps=1e-4)
    field = ExactField(StraightLine(process.noise.log_prob), [0.5, 0.5, 1.2, 1.7])

    class C4(torch.nn.Module):
        def forward(self, x, t):
            return field.velocity(t.to(F64), x)

    x_T = process.prior((4000, 1), torch.Generator().manual_seed(0), dtype=F64)
    order = torch.argsort(x_T[:, 0])
    states = []
    x0 = udm.sample(udm.Denoiser(C4(), process, "velocity"), "heun", x_T=x_T, times=torch.logspace(0, -4, 400, dtype=F64).tolist() + [0.0],
                    callback=lambda s: states.append(s["x"][order, 0]))
    for x in states:
        assert bool((x[1:] >= x[:-1] - 1e-12).all())
    end = x0[:, 0]
    assert bool(torch.isfinite(end).all())
    fractions = torch.stack([((end - c).abs() < 1e-3).double().mean() for c in (0.5, 1.2, 1.7)])
    target = torch.tensor([0.5, 0.25, 0.25], dtype=F64)
    se = torch.sqrt(target * (1 - target) / 4000)
    assert bool(((fractions - target).abs() < 4 * se).all()), fractions


@pytest.mark.parametrize("noise", ["gaussian", "uniform", "laplace"])
def test_c4_field_is_the_velocity_of_the_exact_denoiser(noise: str) -> None:
    """C4's sum_j pi_j p_t(x|x_j) f_t(x|x_j) / p_t(x) is the linear-path velocity alpha' x0_hat + sigma' eps_hat."""
    process = udm.get_process("rectified_flow", noise=noise)
    law = process.noise
    points = PointMasses([[0.5, -0.3], [1.0, 1.2], [-0.7, 0.1]], [0.2, 0.5, 0.3])
    field = ExactField(StraightLine(law.log_prob), points.points, points.weights, floor=0.0)
    g = torch.Generator().manual_seed(1)
    t = 0.2 + 0.6 * torch.rand(64, generator=g, dtype=F64)
    x = (1 - t[:, None]) * points.sample(64, g) + t[:, None] * law.sample((64, 2), g, dtype=F64)
    x0_hat = points.posterior_mean(x, t, process)
    velocity = udm.from_x0(x0_hat, x, t, process, "velocity")
    torch.testing.assert_close(velocity, field.velocity(t, x), rtol=1e-10, atol=1e-12)


def _gmm_reference(gmm: GaussianMixture, n: int) -> tuple[torch.Tensor, float]:
    """A held-out draw and the data floor: the mean sliced Wasserstein of 5 fresh draws to it (one draw is too noisy)."""
    ref = gmm.sample(n, torch.Generator().manual_seed(100))
    floors = [float(sliced_wasserstein(gmm.sample(n, torch.Generator().manual_seed(200 + k)), ref)) for k in range(5)]
    return ref, sum(floors) / len(floors)


@pytest.mark.parametrize("noise", ["gaussian", "uniform"])
def test_prior_agnostic_training_on_a_gmm(tmp_path: Path, noise: str) -> None:
    """§8.3 item 4: CFM on eight Gaussians with a Gaussian and with a uniform prior both reach SW within 3x the floor."""
    config = load_config(CONFIGS / "demo_cfm.yaml", {"process.noise": {"name": noise}, "train.steps": 1500, "train.log_every": 500})
    trainer = Trainer(config, tmp_path, progress=False)
    trainer.train()
    gmm = GaussianMixture.isotropic(
        [1 / 8] * 8, [[math.sqrt(2) * math.cos(k * math.pi / 4), math.sqrt(2) * math.sin(k * math.pi / 4)] for k in range(8)], 0.1
    )
    ref, floor = _gmm_reference(gmm, 2000)
    with torch.no_grad():
        x = udm.sample(trainer.sampling_denoiser(), "heun", steps=32, shape=(2000, 2), seeds=range(2000))
    if noise == "uniform":
        assert isinstance(trainer.process.noise, UniformNoise)
    sw = float(sliced_wasserstein(x.double(), ref))
    assert sw <= 3 * floor, (sw, floor)
