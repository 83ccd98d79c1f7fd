"""Noise laws of linear processes (THEORY §7.1, §7.4, §8.1): the process kernels agree with the Green's-function theory."""

from __future__ import annotations

import pytest
import torch
from scipy import stats

import udm
from udm.processes.base import REQUIREMENTS, GaussianPath, KernelDensity, LinearPath, TokenProcess, require
from udm.processes.noise import CDFNoise
from udm.theory import GaussianGreen, GravityGreen, ScaleGreen

F64 = torch.float64


@pytest.mark.parametrize(
    ("kernel", "green"),
    [("gravity", GravityGreen(3)), ("exp", ScaleGreen(3, "exp")), ("tanh", ScaleGreen(3, "tanh")), ("gaussian", GaussianGreen(3, lambda t: t))],
)
def test_green_process_kernel_is_the_green_function(kernel: str, green) -> None:
    """log p_t(x | x0) of the `green` process (noise law + linear path) equals the theory object's G_1, in d = 3."""
    process = udm.get_process("green", kernel=kernel)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(50, 3, generator=g, dtype=F64)
    t = 0.1 + 3 * torch.rand(50, generator=g, dtype=F64)
    x = x0 + t[:, None] * 2 * torch.randn(50, 3, generator=g, dtype=F64)
    torch.testing.assert_close(process.log_kernel(x, x0, t), green.log_density(t, x, x0), rtol=1e-10, atol=1e-10)
    # the process corrupts with the same radial law: KS of |x_t - x0| / t against the theory's radius CDF at t = 1
    eps = process.sample_noise((3000, 3), torch.Generator().manual_seed(1), dtype=F64)
    r = process.corrupt(torch.zeros(3000, 3, dtype=F64), 1.0, eps).norm(dim=1).numpy()
    assert stats.kstest(r, lambda v: green.radius_cdf_numpy(1.0, v)).pvalue > 0.01


def test_a_callable_radius_cdf_is_inverted_numerically() -> None:
    """A user CDF (here Exp(1) written by hand) gives the same radius law as the built-in closed-form inverse."""
    law = CDFNoise(lambda s: 1.0 - torch.exp(-s))
    assert law.inverse is None
    eps = law.sample((4000, 2), torch.Generator().manual_seed(2), dtype=F64)
    assert stats.kstest(eps.norm(dim=1).numpy(), stats.expon.cdf).pvalue > 0.01
    torch.testing.assert_close(law.log_prob(eps), CDFNoise("exp").log_prob(eps), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="unknown radius CDF"):
        CDFNoise("cauchy")


def test_noise_laws_by_name_and_their_errors() -> None:
    assert sorted(udm.NOISES.names()) == ["gaussian", "laplace", "radial", "student_t", "uniform"]
    assert udm.get_noise(None).is_standard_normal and not udm.get_noise("uniform").is_standard_normal
    for spec, message in (({"name": "uniform", "low": 1.0, "high": 0.0}, "high > low"), ({"name": "laplace", "scale": 0.0}, "scale > 0"),
                          ({"name": "student_t", "D": 0.0}, "D > 0")):
        with pytest.raises(ValueError, match=message):
            udm.get_noise(spec)
    with pytest.raises(ValueError, match="noise law"):
        udm.get_process("edm", noise="poisson")
    # Gaussian-only pieces name the process and its noise law
    uniform = udm.get_process("rectified_flow", noise="uniform")
    with pytest.raises(ValueError, match="Gaussian noise.*UniformNoise"):
        udm.sample(lambda x, t: x, "ddpm", steps=4, shape=(2, 2), process=uniform)


def test_require_checks_declared_capabilities() -> None:
    """require returns the process when it has the capability, else one ValueError naming who needed what (and the hint)."""
    vp, laplace, mask = udm.get_process("vp"), udm.get_process("edm", noise="laplace"), udm.get_process("mask", vocab_size=3, seq_len=4)
    assert require(vp, GaussianPath, "x") is vp and require(laplace, LinearPath, "x") is laplace
    assert isinstance(laplace, KernelDensity) and require(mask, TokenProcess, "x") is mask
    with pytest.raises(ValueError, match=r"^the thing needs a linear process \(x_t = alpha x0 \+ sigma eps\), got 'mask'; try vp$"):
        require(mask, LinearPath, "the thing", "try vp")
    with pytest.raises(ValueError, match=r"^the thing needs a linear process .*got 'mask'$"):
        require(mask, GaussianPath, "the thing")
    with pytest.raises(ValueError, match=r"^the SDE needs Gaussian noise eps ~ N\(0, I\), but process 'edm' draws eps from Laplace"):
        require(laplace, GaussianPath, "the SDE")
    for capability in REQUIREMENTS:
        if capability not in (LinearPath, GaussianPath):
            with pytest.raises(ValueError, match=r"^X needs .*, got process 'blur'$"):
                require(udm.get_process("blur", timesteps=4), capability, "X")
    with pytest.raises(TypeError, match="unknown capability"):
        require(vp, int, "X")
