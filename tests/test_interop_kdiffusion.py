"""The k-diffusion / EDM convention both ways (udm.interop.kdiffusion): identities and a k-diffusion-style sampler."""

from __future__ import annotations

import math

import pytest
import torch

import udm
from udm.interop import from_kdiffusion, to_kdiffusion
from udm.theory import GaussianMixture

Tensor = torch.Tensor


def _gmm(dim: int = 3) -> GaussianMixture:
    g = torch.Generator().manual_seed(0)
    return GaussianMixture.isotropic([0.5, 0.3, 0.2], torch.randn(3, dim, generator=g, dtype=torch.float64), [0.3, 0.5, 0.2])


def _karras_model(gmm: GaussianMixture, *, with_cond: bool = False):
    """A k-diffusion-style denoiser D(x; sigma): the exact posterior mean of ``gmm`` under x = x0 + sigma eps."""
    edm = udm.get_process("edm")
    seen: list[object] = []

    def model(x: Tensor, sigma: Tensor, **cond: object) -> Tensor:
        seen.append(cond.get("cond"))
        y = cond.get("cond") if with_cond else None
        return gmm.posterior_mean(x, torch.as_tensor(sigma, dtype=torch.float64), edm, y=y)

    return model, seen


def _points(n: int = 16, dim: int = 3) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    x = 3.0 * torch.randn(n, dim, generator=g, dtype=torch.float64)
    sigma = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(math.log(0.01), math.log(50.0), generator=g))
    return x, sigma


def test_kdiffusion_model_wrapped_both_ways_is_the_identity() -> None:
    """to_kdiffusion(from_kdiffusion(D)) == D at per-sample and scalar sigmas (float64, <= 1e-12)."""
    model, _ = _karras_model(_gmm())
    back = to_kdiffusion(from_kdiffusion(model))
    x, sigma = _points()
    ref = model(x, sigma)
    assert float((back(x, sigma) - ref).abs().max()) <= 1e-12
    assert float((back(x, 2.5) - model(x, torch.full((16,), 2.5, dtype=torch.float64))).abs().max()) <= 1e-12


@pytest.mark.parametrize(("process", "prediction"), [("edm", "edm"), ("ddpm", "eps"), ("vp", "v"), ("rectified_flow", "velocity")])
def test_udm_denoiser_wrapped_both_ways_keeps_its_estimate(process: str, prediction: str) -> None:
    """from_kdiffusion(to_kdiffusion(den)) at (x~, sigma~) is den at (alpha x~, t(sigma~)): the same x0_hat (<= 1e-12)."""
    proc = udm.get_process(process)
    gmm = _gmm()
    den = gmm.denoiser(proc, prediction)
    round_trip = from_kdiffusion(to_kdiffusion(den), sigma_max=1e4)
    x, sigma = _points()
    t = proc.t_from_sigma_tilde(sigma)
    inside = (t > proc.t_eps) & (t < proc.t_max)
    x, sigma, t = x[inside], sigma[inside], t[inside]
    assert len(t) >= 8
    direct = den(proc.alpha(t)[:, None] * x, t)
    assert float((round_trip(x, sigma) - direct).abs().max()) <= 1e-12


def test_condition_reaches_the_model_under_its_keyword() -> None:
    """A label given to the udm Denoiser arrives as ``cond=``, and a wrapped udm model takes ``cond`` back."""
    gmm = _gmm()
    model, seen = _karras_model(gmm, with_cond=True)
    den = from_kdiffusion(model)
    x, sigma = _points(4)
    y = torch.tensor([0, 1, 2, 1])
    out = den(x, sigma, y)
    assert seen[-1] is y
    assert float((out - gmm.posterior_mean(x, sigma, udm.get_process("edm"), y=y)).abs().max()) <= 1e-12
    assert float((to_kdiffusion(den)(x, sigma, cond=y) - out).abs().max()) <= 1e-12


def test_kdiffusion_style_euler_drives_a_udm_vp_model_like_udm_euler() -> None:
    """k-diffusion's sample_euler loop (d = (x - D) / sigma) on a wrapped DDPM model equals udm's euler in the sigma variable."""
    proc = udm.get_process("ddpm")
    den = _gmm().denoiser(proc, "eps")
    times = udm.get_grid("karras", proc, 8)
    x_T = torch.randn(32, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref = udm.sample(den, "euler", times=times, x_T=x_T, dtype=torch.float64, variable="sigma")

    model = to_kdiffusion(den)
    sigmas = torch.cat([proc.sigma_tilde(times[:-1]), torch.zeros(1, dtype=torch.float64)])
    x = x_T / proc.alpha(times[0])
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        d = (x - model(x, s)) / s
        x = x + d * (s_next - s)
    assert float((x - ref).abs().max()) <= 1e-10


def test_only_linear_processes_have_the_convention() -> None:
    """A process with no (alpha, sigma) (token masking) is refused by name."""
    mask = udm.get_process("mask", vocab_size=5, seq_len=4)
    with pytest.raises(ValueError, match="k-diffusion convention"):
        to_kdiffusion(lambda x, t: x, mask)
