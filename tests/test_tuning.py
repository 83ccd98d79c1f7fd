"""optimize_grid: a per-model time grid fitted on pilot noise (Align Your Steps style)."""

from __future__ import annotations

import pytest
import torch

import udm
from udm.samplers import optimize_grid
from udm.theory import GaussianMixture

F64 = torch.float64


def gmm2d() -> GaussianMixture:
    covs = torch.tensor([[[0.30, 0.10], [0.10, 0.20]], [[0.15, -0.05], [-0.05, 0.25]], [[0.10, 0.0], [0.0, 0.40]]])
    return GaussianMixture([0.5, 0.3, 0.2], [[-1.5, 0.0], [1.5, 1.0], [0.5, -1.5]], covs)


@pytest.fixture(scope="module")
def problem():
    process = udm.get_process("ddpm")
    den = gmm2d().denoiser(process, "eps")
    x_pilot = udm.rng.randn((64, 2), 12345, dtype=F64)
    return process, den, x_pilot


def test_grid_shape_ends_and_monotone(problem):
    process, den, x_pilot = problem
    grid = optimize_grid(den, "dpmpp_2m", 4, x_pilot, max_evals=30)
    assert grid.dtype == F64 and grid.shape == (5,)
    assert float(grid[0]) == process.t_max and float(grid[-1]) == process.t_min
    assert bool((grid[1:] < grid[:-1]).all())
    out = udm.sample(den, "dpmpp_2m", times=grid, x_T=x_pilot, dtype=F64)  # usable as an explicit grid
    assert out.shape == x_pilot.shape


def test_reduces_pilot_error_against_the_initial_grid(problem):
    process, den, x_pilot = problem
    opts = {"order": 3, "final_order": 2}
    grid, info = optimize_grid(den, "unipc", 5, x_pilot, max_evals=120, return_info=True, **opts)
    ref = info["reference"]

    def mse(g: torch.Tensor) -> float:
        return float((udm.sample(den, "unipc", times=g, x_T=x_pilot, dtype=F64, **opts) - ref).pow(2).mean())

    quad = udm.get_grid("quadratic", process, 5)
    assert info["mse_init"] == pytest.approx(mse(quad), rel=1e-12)
    assert info["mse"] == pytest.approx(mse(grid), rel=1e-12)
    assert mse(grid) < 0.5 * mse(quad)
    assert info["evals"] <= 120


def test_explicit_init_and_reference(problem):
    process, den, x_pilot = problem
    init = udm.get_grid("karras", process, 3)
    ref = udm.sample(den, "rk45", times=[process.t_max, 1e-6, 0.0], x_T=x_pilot, rtol=1e-8, atol=1e-8, dtype=F64)
    grid = optimize_grid(den, "ddim", 3, x_pilot, init=init, reference=ref, max_evals=20)
    assert float(grid[0]) == float(init[0]) and float(grid[-1]) == float(init[-1]) and len(grid) == 4


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"steps": 1}, "steps must be an integer >= 2"),
        ({"steps": 3.0}, "steps must be an integer >= 2"),
        ({"x_pilot": torch.zeros(2)}, "x_pilot must be a batch"),
        ({"x_pilot": torch.zeros(0, 2)}, "x_pilot must be a batch"),
        ({"sampler": "nope"}, "unknown sampler 'nope'"),
        ({"sampler": "rk45"}, "adaptive"),
        ({"sampler": "ddpm"}, "stochastic"),
        ({"init": [1000.0, 500.0, 0.0]}, "init grid has 2 steps but steps=3"),
        ({"reference": torch.zeros(3, 2)}, "reference must have the shape of x_pilot"),
        ({"bogus_option": 1}, "has no option 'bogus_option'"),
    ],
)
def test_bad_input_errors(problem, kwargs, match):
    process, den, x_pilot = problem
    args = {"sampler": "dpmpp_2m", "steps": 3, "x_pilot": x_pilot, "max_evals": 5, **kwargs}
    if "reference" not in kwargs:
        args["reference"] = torch.zeros_like(x_pilot)
    with pytest.raises(ValueError, match=match):
        optimize_grid(den, args.pop("sampler"), args.pop("steps"), args.pop("x_pilot"), **args)


def test_needs_a_process():
    with pytest.raises(ValueError, match="no process"):
        optimize_grid(lambda x, t: x, "ddim", 3, torch.zeros(4, 2))
