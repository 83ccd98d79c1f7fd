"""Cold processes x_t = D_t(x0) + sigma eps (THEORY §4.2, §4.7) with the generic kernels and sampler.

* kernel marginal (§3.3, §4.7.1): with x0_hat = x0, K1 from x_t = F_t(x0, eps) lands exactly
  on F_s(x0, eps) (sigma = 0: exactly D_s(x0)) for blur (iterated, dct), fade and pool;
  K0 and K2 with sigma > 0 have the law N(D_s(x0), sigma^2 I);
* §4.7.3: for the linear D_t(x) = x + t e and a biased restorer, TACoS (K1,
  ``udm_deterministic``) recovers x0 exactly and the naive K0 sampler does not;
  with an oracle restorer both are exact;
* each degradation against an independent reference: repeated ``F.pad`` + ``conv2d``
  (reflect, zeros, circular), ``scipy.fft.dctn`` heat dissipation (a mean-preserving
  semigroup), ``avg_pool2d`` + nearest upsampling, the fade mask's monotonicity;
* one t per sample equals per-sample calls;
* clear ValueErrors for bad input; the GMM generation prior matches the data's channel means.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.fft
import scipy.stats
import torch
import torch.nn.functional as F

import udm
from udm.kernels import KERNELS
from udm.processes.blur import BlurProcess, heat_matrices
from udm.processes.cold import ColdProcess
from udm.processes.fade import FadeProcess
from udm.processes.pooling import PoolProcess

H, W = 9, 11  # odd, non-square: partial pooling blocks, reflect padding on both axes

BUILDERS = {
    "blur": lambda sigma: BlurProcess(12, sigma, kernel_size=5, std_rate=0.1),
    "blur_dct": lambda sigma: BlurProcess(12, sigma, form="dct", blur_min=0.3, blur_max=4.0),
    "fade": lambda sigma: FadeProcess(12, sigma, k_std=0.4, end_value=0.3),
    "pool": lambda sigma: PoolProcess((H, W), sigma=sigma),
}


def _images(n: int, seed: int, c: int = 2, h: int = H, w: int = W) -> torch.Tensor:
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ----------------------------------------------------------------------------- kernel marginal


@pytest.mark.parametrize("name", list(BUILDERS))
def test_linear_sigma_schedule_is_clean_at_zero_and_k1_exact(name: str) -> None:
    """sigma_t = sigma t / T: K1 with the true x0 gives F_s(x0, eps) exactly, and s = 0 returns x0 itself."""
    p = type(BUILDERS[name](0.1))(**{**BUILDERS[name](0.1).config(), "sigma_schedule": "linear"})
    x0 = _images(5, 0)
    eps = p.sample_noise(x0.shape, torch.Generator().manual_seed(1), dtype=torch.float64)
    T = p.T
    x_T = p.corrupt(x0, T, eps)
    torch.testing.assert_close(x_T - p.degrade(x0, T), 0.1 * eps, rtol=0, atol=1e-12)
    for t, s in [(T, T - 1), (T - 1, 1), (torch.tensor([T, 3, 2, 1, T]), torch.tensor([T - 1, 0, 1, 0, 2]))]:
        out = KERNELS.get("K1")(p, p.corrupt(x0, t, eps), x0, t, s)
        torch.testing.assert_close(out, p.corrupt(x0, s, eps), rtol=0, atol=1e-12)
    torch.testing.assert_close(KERNELS.get("K1")(p, x_T, x0, T, 0), x0, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="no noise to recover at t = 0"):
        p.recover_noise(x0, x0, 0)


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("sigma", [0.0, 0.1])
def test_k1_with_true_x0_is_exact(name: str, sigma: float) -> None:
    p = BUILDERS[name](sigma)
    T = p.T
    x0 = _images(5, 0)
    eps = p.sample_noise(x0.shape, torch.Generator().manual_seed(1), dtype=torch.float64)
    assert p.noise_is_standard_normal is (sigma > 0)
    if sigma == 0:
        assert torch.equal(eps, torch.zeros_like(eps))
    pairs = [(T, T - 1), (T - 1, 1), (T, 0)]
    pairs.append((torch.tensor([T, T - 1, 2, 1, T]), torch.tensor([T - 1, 0, 1, 0, 2])))
    for t, s in pairs:
        x_t = p.corrupt(x0, t, eps)
        torch.testing.assert_close(p.recover_noise(x0, x_t, t), eps, rtol=0, atol=1e-12)
        out = KERNELS.get("K1")(p, x_t, x0, t, s)
        torch.testing.assert_close(out, p.corrupt(x0, s, eps), rtol=0, atol=1e-12)
        if sigma == 0:
            torch.testing.assert_close(out, p.degrade(x0, s), rtol=0, atol=1e-12)
    # t = 0 is the clean image, and K1 to s = 0 returns exactly x0 when sigma = 0
    torch.testing.assert_close(p.degrade(x0, 0), x0, rtol=0, atol=1e-14)
    if sigma == 0:
        torch.testing.assert_close(KERNELS.get("K1")(p, p.degrade(x0, T), x0, T, 0), x0, rtol=0, atol=1e-12)
    # the K1 step is TACoS even for a wrong x0_hat: x_s = x_t + D_s(x0_hat) - D_t(x0_hat)
    wrong = _images(5, 2)
    x_t = p.corrupt(x0, T, eps)
    torch.testing.assert_close(
        KERNELS.get("K1")(p, x_t, wrong, T, 3), x_t + p.degrade(wrong, 3) - p.degrade(wrong, T), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("name", list(BUILDERS))
def test_k0_and_k2_law_with_noise(name: str) -> None:
    """sigma > 0: K0 and K2 from x_t = F_t(x0, eps) give x_s ~ N(D_s(x0), sigma^2 I)."""
    sigma, n = 0.1, 3000
    p = BUILDERS[name](sigma)
    x0 = _images(1, 3, c=1).expand(n, 1, H, W)
    g = torch.Generator().manual_seed(4)
    t, s = p.T, 1
    x_t = p.corrupt(x0, t, p.sample_noise(x0.shape, g, dtype=torch.float64))
    for kernel, kw in (("K0", {}), ("K2", {"mix": 0.6})):
        out = KERNELS.get(kernel)(p, x_t, x0, t, s, generator=g, **kw)
        z = (out - p.degrade(x0[:1], s)) / sigma
        assert z.mean(0).abs().max() < 5 / math.sqrt(n), kernel
        assert (z.std(0) - 1).abs().max() < 5 * math.sqrt(0.5 / n), kernel
    # sigma = 0: q is a point mass, so K2 (which mixes standard normals) is refused
    with pytest.raises(ValueError, match="K2"):
        KERNELS.get("K2")(BUILDERS[name](0.0), x_t, x0, t, s, mix=0.5)


# ----------------------------------------------------------------------------- TACoS vs naive


class _Shift(ColdProcess):
    """The linear degradation D_t(x) = x + t e of THEORY §4.2 / §4.7.3."""

    name = "shift"

    def __init__(self, e: torch.Tensor, timesteps: int = 6, sigma: float = 0.0) -> None:
        super().__init__(timesteps, sigma)
        self.e = e

    def _degrade(self, x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        return x + levels.to(x.device, x.dtype).reshape(-1, 1, 1, 1) * self.e.to(x)


def test_tacos_exact_for_linear_degradation_naive_is_not() -> None:
    e = _images(1, 5, c=1, h=4, w=4)[0]
    p = _Shift(e)
    x0 = _images(8, 6, c=1, h=4, w=4)
    x_T = p.degrade(x0, p.T)

    def biased(x: torch.Tensor, t: float) -> torch.Tensor:
        return 0.5 * x + 0.3  # depends on x_t and is wrong at every step

    def oracle(x: torch.Tensor, t: float) -> torch.Tensor:
        return x - t * e

    for steps in (6, 3, 1):  # every step count dividing T: step skipping is exact too
        improved = udm.sample(biased, "udm_deterministic", steps=steps, x_T=x_T, process=p)
        torch.testing.assert_close(improved, x0, rtol=0, atol=1e-12)
        naive = udm.sample(biased, "udm_baseline", steps=steps, x_T=x_T, process=p)
        assert (naive - x0).abs().max() > 0.1
        for sampler in ("udm_deterministic", "udm_baseline"):
            out = udm.sample(oracle, sampler, steps=steps, x_T=x_T, process=p)
            torch.testing.assert_close(out, x0, rtol=0, atol=1e-12)
    # a grid off the integers is refused before any step, with what to do
    with pytest.raises(ValueError, match="integer times 0..T.*divides T"):
        udm.sample(biased, "udm_deterministic", steps=4, x_T=x_T, process=p)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_oracle_restorer_recovers_x0(name: str) -> None:
    """With x0_hat = x0 both samplers walk D_T(x0) -> D_{T-1}(x0) -> ... -> x0 exactly."""
    p = BUILDERS[name](0.0)
    x0 = _images(3, 7)
    x_T = p.degrade(x0, p.T)
    seen = []
    for sampler in ("udm_deterministic", "udm_baseline"):
        out = udm.sample(lambda x, t: x0, sampler, steps=p.T, x_T=x_T, process=p, callback=seen.append)
        torch.testing.assert_close(out, x0, rtol=0, atol=1e-10)
    for info in seen:
        torch.testing.assert_close(info["x"], p.degrade(x0, info["s"]), rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------- degradations


def _gauss(size: int, std: float) -> torch.Tensor:
    j = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(j**2) / (2 * std**2))
    return g / g.sum()


@pytest.mark.parametrize("padding", ["reflect", "zeros", "circular"])
@pytest.mark.parametrize("schedule", ["exponential", "linear"])
def test_iterated_blur_equals_repeated_conv2d(padding: str, schedule: str) -> None:
    p = BlurProcess(4, kernel_size=5, std_schedule=schedule, std_rate=0.3, std_start=0.7, padding=padding)
    x = _images(2, 8, c=3)
    y = x
    for i in range(1, 5):
        std = 0.7 * math.exp(0.3 * (i - 1)) if schedule == "exponential" else 0.7 + 0.3 * (i - 1)
        g = _gauss(5, std)
        weight = torch.outer(g, g).expand(3, 1, 5, 5)
        mode = "constant" if padding == "zeros" else padding
        y = F.conv2d(F.pad(y, (2, 2, 2, 2), mode=mode), weight, groups=3)
        torch.testing.assert_close(p.degrade(x, i), y, rtol=0, atol=1e-12)
    # THEORY's reference setting builds and runs (27-tap kernels, 300 steps) and keeps dtype
    ref = BlurProcess()
    out = ref.degrade(_images(2, 9, c=1, h=28, w=28).float(), torch.tensor([0, 300]))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    if padding == "reflect":  # reflect padding keeps constants constant
        torch.testing.assert_close(ref.degrade(torch.full((1, 1, 28, 28), 0.7), 300), torch.full((1, 1, 28, 28), 0.7))


def test_dct_blur_is_a_mean_preserving_semigroup() -> None:
    x = _images(3, 10)
    # D(tau1) D(tau2) = D(tau1 + tau2) on one axis
    a = heat_matrices(H, [0.7, 1.9, 2.6])
    np.testing.assert_allclose(a[0] @ a[1], a[2], rtol=0, atol=1e-12)
    # through the process: tau_2 = 2 tau_1 when blur_max = sqrt(2) blur_min, so D_1 D_1 = D_2
    p = BlurProcess(2, form="dct", blur_min=0.8, blur_max=0.8 * math.sqrt(2))
    torch.testing.assert_close(p.degrade(p.degrade(x, 1), 1), p.degrade(x, 2), rtol=0, atol=1e-12)
    # independent reference: scipy's 2-D DCT with the decay exp(-pi^2 (k^2/H^2 + l^2/W^2) tau_t)
    q = BUILDERS["blur_dct"](0.0)
    taus = np.concatenate([[0.0], np.geomspace(0.3, 4.0, q.T) ** 2 / 2])
    k = np.arange(H)[:, None] ** 2 / H**2 + np.arange(W)[None, :] ** 2 / W**2
    for t in (0, 1, 6, q.T):
        ref = scipy.fft.idctn(
            scipy.fft.dctn(x.numpy(), axes=(2, 3), norm="ortho") * np.exp(-(math.pi**2) * k * taus[t]),
            axes=(2, 3),
            norm="ortho",
        )
        torch.testing.assert_close(q.degrade(x, t), torch.from_numpy(ref), rtol=0, atol=1e-12)
        torch.testing.assert_close(q.degrade(x, t).mean((2, 3)), x.mean((2, 3)), rtol=0, atol=1e-12)
    # blur increases with t: the deviation from the mean shrinks
    dev = [float((q.degrade(x, t) - x.mean((2, 3), keepdim=True)).norm()) for t in range(q.T + 1)]
    assert all(b < a for a, b in zip(dev[:-1], dev[1:]))


def test_pooling_levels() -> None:
    x = _images(2, 11, h=8, w=12)
    p = PoolProcess((8, 12))
    assert p.T == 4  # ceil(log2(12))
    lvl1 = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")
    torch.testing.assert_close(p.degrade(x, 1), lvl1, rtol=0, atol=1e-12)
    torch.testing.assert_close(p.degrade(x, p.T), x.mean((2, 3), keepdim=True).expand_as(x), rtol=0, atol=1e-12)
    # odd sizes: partial edge blocks are averaged over the pixels they hold
    y = _images(2, 12)
    q = BUILDERS["pool"](0.0)
    assert q.T == 4
    for t in range(q.T + 1):
        b = 2**t
        ref = F.avg_pool2d(y, b, ceil_mode=True).repeat_interleave(b, 2).repeat_interleave(b, 3)[..., :H, :W]
        torch.testing.assert_close(q.degrade(y, t), ref, rtol=0, atol=1e-12)
    # nested projections: D_s D_t = D_t for s <= t
    torch.testing.assert_close(q.degrade(q.degrade(y, 3), 1), q.degrade(y, 3), rtol=0, atol=1e-12)


def test_fade_mask() -> None:
    p = BUILDERS["fade"](0.0)
    z = p.masks(H, W)
    assert z.shape == (p.T + 1, H, W)
    assert torch.equal(z[0], torch.ones(H, W))
    assert ((z[1:] - z[:-1]) <= 0).all() and (z >= 0).all() and (z <= 1).all()
    assert z[1, (H - 1) // 2, (W - 1) // 2] == 0  # the bump is centred on a pixel and normalized by its max
    x = _images(2, 13)
    for t in (0, 3, p.T):
        torch.testing.assert_close(p.degrade(x, t), z[t] * x + (1 - z[t]) * 0.3, rtol=0, atol=1e-14)
    # the default schedule fades a 28x28 image completely by t = T, without wasting steps
    d = FadeProcess()
    z28 = d.masks(28, 28)
    assert z28[-1].max() < 0.03 and 0.2 < 1 - float(z28[d.T // 2].mean()) < 0.9
    # THEORY's setting is one option away
    assert FadeProcess(750, k_std=0.05, i0=1).masks(28, 28).shape == (751, 28, 28)


# ----------------------------------------------------------------------------- per-sample times


@pytest.mark.parametrize("name", list(BUILDERS))
def test_per_sample_times_equal_per_sample_calls(name: str) -> None:
    p = BUILDERS[name](0.1)
    x = _images(5, 14)
    t = torch.tensor([0, p.T, 1, p.T - 1, 2])
    out = p.degrade(x, t)
    for i in range(5):
        torch.testing.assert_close(out[i : i + 1], p.degrade(x[i : i + 1], int(t[i])), rtol=0, atol=1e-13)
    # float times that are integers, a 0-d tensor, and float32 inputs are all fine
    torch.testing.assert_close(p.degrade(x, t.double()), out, rtol=0, atol=0)
    torch.testing.assert_close(p.degrade(x, torch.tensor(2.0)), p.degrade(x, 2), rtol=0, atol=0)
    out32 = p.degrade(x.float(), t)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32, out.float(), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- errors


def test_bad_input_raises_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"8x8 is too small for blur kernel_size=27.*kernel_size <= 15"):
        BlurProcess().degrade(torch.zeros(2, 1, 8, 8), 3)
    BlurProcess(kernel_size=27, padding="zeros").degrade(torch.zeros(2, 1, 8, 8), 3)  # zeros padding has no limit
    with pytest.raises(ValueError, match="odd"):
        BlurProcess(kernel_size=4)
    with pytest.raises(ValueError, match="kernel_size do not apply to the 'dct'"):
        BlurProcess(form="dct", kernel_size=5)
    with pytest.raises(ValueError, match="image_size"):
        PoolProcess()
    with pytest.raises(ValueError, match=r"8x8.*timesteps <= 3"):
        PoolProcess(timesteps=6).degrade(torch.zeros(1, 1, 8, 8), 1)
    with pytest.raises(ValueError, match=r"timesteps \(T\) must be an integer >= 1"):
        FadeProcess(0)
    for name, build in BUILDERS.items():
        p = build(0.0)
        x = _images(2, 15)
        with pytest.raises(ValueError, match=r"images of shape \(B, C, H, W\); got \(2, 5\)"):
            p.corrupt(torch.zeros(2, 5), 1, torch.zeros(2, 5))
        with pytest.raises(ValueError, match=r"integer times 0..T \(T=\d+\), got t=2.5.*divides T"):
            p.degrade(x, 2.5)
        with pytest.raises(ValueError, match=r"got t=1.5"):
            p.degrade(x, torch.tensor([1.0, 1.5]))
        with pytest.raises(ValueError, match="has times 0.."):
            p.degrade(x, p.T + 1)
        with pytest.raises(ValueError, match=r"shape \(2,\)"):
            p.degrade(x, torch.tensor([1, 2, 3]))
        with pytest.raises(ValueError, match="no generation prior yet: call process.fit_prior"):
            p.prior((2, 2, H, W))
        with pytest.raises(ValueError, match="no generation prior yet"):
            udm.sample(lambda x, t: x, "udm_deterministic", steps=p.T, shape=(2, 2, H, W), process=p)


# ----------------------------------------------------------------------------- generation prior


def test_fitted_prior_matches_channel_means() -> None:
    data = udm.data.load_dataset("digits").x
    p = BlurProcess(20, kernel_size=5, std_rate=0.05)
    opts = p.fit_prior(data, components=5, seed=0)
    assert set(opts) == {"prior_weights", "prior_means", "prior_stds"} and len(opts["prior_weights"]) == 5
    # the assembly hook fits the same options while the prior is missing, then nothing
    assert BlurProcess(20, kernel_size=5, std_rate=0.05).fit(data, seed=0) == p.fit_prior(data, components=10, seed=0)
    opts = p.fit_prior(data, components=5, seed=0)
    assert p.fit(data, seed=0) == {}
    # the config (with the mixture) survives JSON and rebuilds the same process
    q = BlurProcess(**json.loads(json.dumps(p.config())))
    assert q.config() == p.config()
    draws = q.prior((3000, 1, 8, 8), generator=0, dtype=torch.float64)
    assert draws.shape == (3000, 1, 8, 8) and draws.dtype == torch.float64
    # each draw is a constant image (D_T of a constant, reflect padding) plus prior_noise
    assert float(draws.std((2, 3)).max()) < 5 * q.prior_noise
    got, want = draws.mean((2, 3))[:, 0], data.double().mean((2, 3))[:, 0]
    assert abs(float(got.mean() - want.mean())) < 0.02
    assert abs(float(got.std() / want.std()) - 1) < 0.08
    assert scipy.stats.ks_2samp(got.numpy(), want.numpy()).pvalue > 1e-3
    # one generator per sample: sample i does not depend on the batch around it
    batch = q.prior((3, 1, 8, 8), [11, 12, 13], dtype=torch.float64)
    torch.testing.assert_close(batch[1:2], q.prior((1, 1, 8, 8), [12], dtype=torch.float64), rtol=0, atol=0)
    # sigma > 0 widens the pixel noise; a channel mismatch is refused
    noisy = BlurProcess(20, 0.2, kernel_size=5, **opts).prior((2000, 1, 8, 8), generator=1, dtype=torch.float64)
    assert abs(float((noisy - noisy.mean((2, 3), keepdim=True)).std()) - 0.2) < 0.01
    with pytest.raises(ValueError, match="1-channel images"):
        q.prior((2, 3, 8, 8))
    # the whole pipeline runs from the prior with shape=
    out = udm.sample(lambda x, t: x, "udm_deterministic", steps=5, shape=(4, 1, 8, 8), process=q, generator=3)
    assert out.shape == (4, 1, 8, 8) and out.dtype == torch.float32


@pytest.mark.parametrize("name", list(BUILDERS))
def test_config_round_trip(name: str) -> None:
    """``type(p)(**p.config())`` through JSON rebuilds the same process and the same D_t."""
    p = BUILDERS[name](0.1)
    assert not p.has_prior
    p.fit_prior(_images(40, 16), components=2, seed=0)
    assert p.has_prior
    assert p.fit(_images(40, 16), seed=0) == {}  # the prior is given: nothing left to fit
    q = type(p)(**json.loads(json.dumps(p.config())))
    assert q.config() == p.config() and q.name == p.name and q.t_max == p.T
    x = _images(2, 17)
    torch.testing.assert_close(q.degrade(x, 3), p.degrade(x, 3), rtol=0, atol=0)
