"""Parameterizations of the network output and the Denoiser (THEORY §0.2, §2.1; Karras et al. 2022, Table 1).

* :func:`udm.convert` round trips between every pair of x0, eps, score, v,
  velocity, edm, and agrees with the exact GMM targets and the textbook formulas;
* a :class:`udm.Denoiser` built on an exact oracle gives the same x0_hat in
  every parameterization;
* EDM preconditioning: c_skip, c_out, c_in, c_noise as in Karras et al. (eq. 7);
* errors: wrong output shapes and unknown parameterization names.
"""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch

import udm
from udm.processes.base import Process
from udm.theory import GaussianMixture

PROCESS_NAMES = ["ddpm", "vp", "vp_cosine", "subvp", "ve", "edm", "rectified_flow"]
KINDS = ["x0", "eps", "score", "v", "velocity", "edm"]
FRACS = [0.0537, 0.3141, 0.7071]

GMM = GaussianMixture(
    [0.25, 0.5, 0.25],
    [[-1.0, 0.5, 0.0], [1.2, -0.4, 0.3], [0.0, 1.5, -1.0]],
    [[0.2, 0.3, 0.1], [0.5, 0.1, 0.2], [0.3, 0.3, 0.3]],
)


def _x(p, t, n: int = 16, seed: int = 0) -> torch.Tensor:
    """Points x_t drawn from the noisy marginal at t (so every target has a sensible magnitude)."""
    g = torch.Generator().manual_seed(seed)
    x0 = GMM.sample(n, g)
    return p.corrupt(x0, t, torch.randn(n, 3, generator=g, dtype=torch.float64))


def _times(p, n: int = 16):
    return [f * p.t_max for f in FRACS] + [torch.linspace(0.02, 0.9, n, dtype=torch.float64) * p.t_max]


def _col(v: torch.Tensor) -> torch.Tensor:
    return v[:, None] if v.ndim == 1 else v


def _karras(sigma: torch.Tensor, sigma_data: float):
    """EDM preconditioning (Karras et al. 2022, Table 1 / eq. 7)."""
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / torch.sqrt(sigma**2 + sigma_data**2)
    c_in = 1.0 / torch.sqrt(sigma**2 + sigma_data**2)
    c_noise = 0.25 * torch.log(sigma)
    return c_skip, c_out, c_in, c_noise


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * max(scale, 1e-300))


# ----------------------------------------------------------------------------- convert


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_convert_round_trips_every_pair(name: str) -> None:
    p = udm.get_process(name)
    for t in _times(p):
        x = _x(p, t)
        for src, dst in itertools.permutations(KINDS, 2):
            pred = GMM.predict(x, t, p, src)
            there = udm.convert(pred, x, t, p, src, dst)
            back = udm.convert(there, x, t, p, dst, src)
            _close(back, pred, 1e-12)
        for kind in KINDS:  # identity conversion
            pred = GMM.predict(x, t, p, kind)
            _close(udm.convert(pred, x, t, p, kind, kind), pred, 1e-12)


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_convert_matches_exact_targets_and_formulas(name: str) -> None:
    p = udm.get_process(name)
    for t in _times(p):
        x = _x(p, t, seed=1)
        tt = torch.as_tensor(t, dtype=torch.float64)
        a, s = _col(p.alpha(tt).expand(x.shape[0])), _col(p.sigma(tt).expand(x.shape[0]))
        da, ds = _col(p.dalpha(tt).expand(x.shape[0])), _col(p.dsigma(tt).expand(x.shape[0]))
        x0 = GMM.posterior_mean(x, t, p)
        eps = GMM.eps(x, t, p)  # computed by GMM independently of the x0 route
        score = GMM.score(x, t, p)
        c_skip, c_out, _, _ = _karras(s / a, 0.5)
        expected = {
            "x0": x0,
            "eps": eps,
            "score": score,
            "v": a * eps - s * x0,  # Salimans & Ho
            "velocity": da * x0 + ds * eps,  # d x_t / dt
            "edm": (x0 - c_skip * x / a) / c_out,  # D = c_skip x~ + c_out F
        }
        for src, dst in itertools.product(KINDS, KINDS):
            _close(udm.convert(expected[src], x, t, p, src, dst), expected[dst], 1e-10)
        for kind in KINDS:
            _close(udm.from_x0(x0, x, t, p, kind), expected[kind], 1e-10)
            _close(udm.to_x0(expected[kind], x, t, p, kind), x0, 1e-10)
            _close(GMM.predict(x, t, p, kind), expected[kind], 1e-10)


def test_convert_accepts_parameterization_objects() -> None:
    p = udm.get_process("vp")
    x = _x(p, 0.4)
    edm13 = udm.PARAMETERIZATIONS.get("edm")(sigma_data=1.3)
    x0 = GMM.posterior_mean(x, 0.4, p)
    a, s = float(p.alpha(0.4)), float(p.sigma(0.4))
    c_skip, c_out, _, _ = _karras(torch.tensor(s / a, dtype=torch.float64), 1.3)
    target = udm.from_x0(x0, x, 0.4, p, edm13)
    _close(target, (x0 - c_skip * x / a) / c_out, 1e-12)
    _close(udm.convert(target, x, 0.4, p, edm13, "x0"), x0, 1e-12)
    # sigma_data matters
    assert not torch.allclose(target, udm.from_x0(x0, x, 0.4, p, "edm"))


# ----------------------------------------------------------------------------- the Denoiser


def _oracle_net(p, kind: str, sigma_data: float = 0.5):
    """An exact network in parameterization ``kind``, undoing the Denoiser's input preconditioning itself."""
    param = udm.PARAMETERIZATIONS.get(kind)(**({"sigma_data": sigma_data} if kind == "edm" else {}))

    def net(x_in: torch.Tensor, t_in: torch.Tensor) -> torch.Tensor:
        if kind == "edm":
            st = torch.exp(4.0 * t_in)  # c_noise = log(sigma~) / 4
            t = p.t_from_sigma_tilde(st)
            x = x_in * (p.alpha(t) * torch.sqrt(st**2 + sigma_data**2))[:, None]  # undo c_in / alpha
        else:
            x, t = x_in, t_in
        return udm.from_x0(GMM.posterior_mean(x, t, p), x, t, p, param)

    return net


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_denoiser_same_x0_in_every_parameterization(name: str) -> None:
    p = udm.get_process(name)
    for t in _times(p, 8):
        x = _x(p, t, n=8, seed=2)
        ref = GMM.posterior_mean(x, t, p)
        for kind in KINDS:
            den = udm.Denoiser(_oracle_net(p, kind), p, prediction=kind)
            assert den.prediction == kind
            _close(den(x, t), ref, 1e-9)
            for other in KINDS:
                _close(den.predict(x, t, other), GMM.predict(x, t, p, other), 1e-8)
        den = udm.Denoiser(_oracle_net(p, "edm", 1.7), p, prediction="edm", sigma_data=1.7)
        _close(den(x, t), ref, 1e-9)


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_gmm_oracle_denoiser_every_parameterization(name: str) -> None:
    """GaussianMixture.denoiser(process, kind) is an exact x0 oracle whatever the kind (EDM included)."""
    p = udm.get_process(name)
    t = 0.3141 * p.t_max
    x = _x(p, t, n=8, seed=3)
    ref = GMM.posterior_mean(x, t, p)
    for kind in KINDS:
        _close(GMM.denoiser(p, kind)(x, t), ref, 1e-9)


@pytest.mark.parametrize("name", ["vp", "ve", "edm"])
def test_gmm_posterior_sample_denoiser_ignores_prediction(name: str) -> None:
    """With posterior_sample=True the oracle returns x0 ~ p(x0 | x_t) at the right t, whatever ``prediction`` says."""
    p = udm.get_process(name)
    t = 0.3141 * p.t_max
    x = _x(p, t, n=8, seed=5)
    ref = GMM.posterior_sample(x, torch.full((8,), t, dtype=torch.float64), p, torch.Generator().manual_seed(0))
    for kind in KINDS:
        den = GMM.denoiser(p, kind, posterior_sample=True, generator=torch.Generator().manual_seed(0))
        _close(den(x, t), ref, 1e-9)


@pytest.mark.parametrize("sigma_data", [0.5, 1.3])
def test_edm_preconditioning_matches_karras(sigma_data: float) -> None:
    p = udm.get_process("edm")
    seen = {}

    def net(x_in, t_in):
        seen["x_in"], seen["t_in"] = x_in, t_in
        return torch.sin(3 * x_in) + t_in[:, None]

    den = udm.Denoiser(net, p, prediction="edm", sigma_data=sigma_data)
    g = torch.Generator().manual_seed(0)
    x = 5 * torch.randn(6, 3, generator=g, dtype=torch.float64)
    for sigma in (0.002, 0.3, 1.0, 7.5, 80.0):
        c_skip, c_out, c_in, c_noise = _karras(torch.tensor(sigma, dtype=torch.float64), sigma_data)
        # the closed forms themselves (Karras et al. 2022, Table 1)
        assert float(c_skip) == pytest.approx(sigma_data**2 / (sigma**2 + sigma_data**2), rel=1e-14)
        assert float(c_out) == pytest.approx(sigma * sigma_data / math.sqrt(sigma**2 + sigma_data**2), rel=1e-14)
        assert float(c_in) == pytest.approx(1 / math.sqrt(sigma**2 + sigma_data**2), rel=1e-14)
        d = den(x, sigma)  # EDM: t = sigma
        _close(seen["x_in"], c_in * x, 1e-14)
        _close(seen["t_in"], torch.full((6,), math.log(sigma) / 4, dtype=torch.float64), 1e-14)
        _close(d, c_skip * x + c_out * (torch.sin(3 * c_in * x) + c_noise), 1e-13)
        # and the raw output is F itself
        _close(den.raw(x, sigma), torch.sin(3 * c_in * x) + c_noise, 1e-14)
    # per-sample sigma
    sig = torch.tensor([0.01, 0.1, 0.5, 2.0, 10.0, 60.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = (c[:, None] for c in _karras(sig, sigma_data))
    _close(den(x, sig), c_skip * x + c_out * (torch.sin(3 * c_in * x) + c_noise), 1e-13)
    # limits: D -> x as sigma -> 0; c_out -> sigma_data as sigma -> inf
    _close(den(x, 1e-9), x, 1e-8)
    _, c_out_big, _, _ = _karras(torch.tensor(1e8, dtype=torch.float64), sigma_data)
    assert float(c_out_big) == pytest.approx(sigma_data, rel=1e-12)


@pytest.mark.parametrize("name", ["vp", "ve", "rectified_flow"])
def test_edm_preconditioning_on_other_processes(name: str) -> None:
    """For x_t = alpha x0 + sigma eps the preconditioning acts on x~ = x_t / alpha with sigma~ = sigma / alpha."""
    p = udm.get_process(name)
    den = udm.Denoiser(lambda x_in, t_in: torch.cos(x_in) * t_in[:, None], p, prediction="edm")
    t = 0.4 * p.t_max
    x = _x(p, t, n=5, seed=4)
    a, s = float(p.alpha(t)), float(p.sigma(t))
    c_skip, c_out, c_in, c_noise = _karras(torch.tensor(s / a, dtype=torch.float64), 0.5)
    xt = x / a
    _close(den(x, t), c_skip * xt + c_out * torch.cos(c_in * xt) * c_noise, 1e-13)


# ----------------------------------------------------------------------------- errors


def test_wrong_output_shape_names_both_shapes() -> None:
    p = udm.get_process("vp")
    x = torch.zeros(5, 3, dtype=torch.float64)
    for net, got in [
        (lambda x_in, t_in: x_in[:, :1], "(5, 1)"),
        (lambda x_in, t_in: x_in.reshape(-1), "(15,)"),
        (lambda x_in, t_in: x_in[:4], "(4, 3)"),
    ]:
        den = udm.Denoiser(net, p, prediction="eps")
        with pytest.raises(ValueError, match=re.escape(got) + ".*" + re.escape("(5, 3)")):
            den(x, 0.5)
    with pytest.raises(ValueError, match=re.escape("(5, 3)")):
        udm.Denoiser(lambda x_in, t_in: x_in.tolist(), p)(x, 0.5)


def test_unknown_prediction_lists_valid_names() -> None:
    p = udm.get_process("vp")
    names = udm.PARAMETERIZATIONS.names()
    assert set(KINDS) <= set(names)
    x = torch.zeros(2, 3, dtype=torch.float64)
    cases = [
        lambda: udm.Denoiser(lambda a, b: a, p, prediction="epsilon"),
        lambda: udm.convert(x, x, 0.5, p, "eps", "noise"),
        lambda: udm.to_x0(x, x, 0.5, p, "sample"),
        lambda: udm.Denoiser(lambda a, b: a, p, prediction="x0").predict(x, 0.5, "flow"),
    ]
    for make in cases:
        with pytest.raises(ValueError) as info:
            make()
        for n in names:
            assert n in str(info.value), (n, str(info.value))


class _NotGaussian(Process):
    name = "not_gaussian"

    def corrupt(self, x0, t, eps):
        return x0 + eps

    def prior(self, shape, generator=None, *, dtype=torch.float32, device=None):
        return torch.zeros(shape, dtype=dtype)


def test_gaussian_parameterizations_need_a_gaussian_process() -> None:
    p = _NotGaussian()
    x = torch.ones(2, 3, dtype=torch.float64)
    for kind in ["eps", "score", "v", "velocity", "edm"]:
        with pytest.raises(ValueError, match="linear process"):
            udm.Denoiser(lambda a, b: a, p, prediction=kind)(x, 0.5)
    # a linear path with non-Gaussian noise has eps, v and velocity targets but no score = -eps/sigma
    uniform = udm.get_process("rectified_flow", noise="uniform")
    for kind in ["eps", "v", "velocity", "edm"]:
        udm.Denoiser(lambda a, b: a, uniform, prediction=kind)(x, 0.5)
    with pytest.raises(ValueError, match="Gaussian noise"):
        udm.Denoiser(lambda a, b: a, uniform, prediction="score")(x, 0.5)
    # x0 prediction is process-agnostic
    out = udm.Denoiser(lambda a, b: 2 * a, p, prediction="x0")(x, 0.5)
    torch.testing.assert_close(out, 2 * x)
