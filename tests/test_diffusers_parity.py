"""Parity with diffusers' schedulers, and convergence of udm's exponential integrators.

diffusers is a test-only dependency. Both sides get the same eps function (the
exact eps* of a Gaussian mixture, float64), the same timesteps and the same
initial noise. diffusers builds its tables in float32, so every scheduler's
tables are overwritten with float64 ones from udm's own ``DDPMSchedule``
before use (``_float64``); then the two sides agree to rounding. Timestep
conventions: diffusers' timestep k is udm's t = k + 1, and t = 0 is clean data.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

import udm
from udm.processes import DDPMSchedule
from udm.theory import GaussianMixture

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

Tensor = torch.Tensor
PROC = udm.get_process("ddpm")  # linear betas 1e-4..0.02, 1000 steps: diffusers' defaults
AC = PROC.schedule.alphas_cumprod
SIGMA_TILDE = ((1.0 - AC) / AC).sqrt()  # diffusers' "sigmas" for timestep k, i.e. udm's sigma/alpha at t = k + 1
ATOL = 1e-6


def _gmm(dim: int, seed: int = 0) -> GaussianMixture:
    """A fixed 3-component mixture with random full covariances, data scale ~1."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(3, dim, dim, generator=g, dtype=torch.float64) / math.sqrt(dim)
    covs = 0.3 * a @ a.transpose(1, 2) + 0.05 * torch.eye(dim, dtype=torch.float64)
    return GaussianMixture([0.5, 0.3, 0.2], torch.randn(3, dim, generator=g, dtype=torch.float64), covs)


def _noise(n: int, dim: int, seed: int = 1) -> Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _float64(sched: object) -> object:
    """Replace a scheduler's float32 tables by udm's float64 ones (call before and after set_timesteps)."""
    sched.betas = PROC.schedule.betas.clone()
    sched.alphas = 1.0 - sched.betas
    sched.alphas_cumprod = AC.clone()
    one = torch.tensor(1.0, dtype=torch.float64)
    if hasattr(sched, "final_alpha_cumprod"):
        sched.final_alpha_cumprod = one
    if hasattr(sched, "one"):
        sched.one = one
    if hasattr(sched, "lambda_t"):
        sched.alpha_t, sched.sigma_t = AC.sqrt(), (1.0 - AC).sqrt()
        sched.lambda_t = sched.alpha_t.log() - sched.sigma_t.log()
    if hasattr(sched, "sigmas") and sched.num_inference_steps is not None:
        last = SIGMA_TILDE[:1] if sched.config.get("final_sigmas_type") == "sigma_min" else torch.zeros(1, dtype=torch.float64)
        sched.sigmas = torch.cat([SIGMA_TILDE[sched.timesteps.long()], last])
    return sched


def _keep_float64_sample(sched: object) -> None:
    """DPMSolverMultistepScheduler.step casts the sample to float32 before its update; hand the update the float64 one."""
    current: dict[str, Tensor] = {}
    updates = ("dpm_solver_first_order_update", "multistep_dpm_solver_second_order_update",
               "multistep_dpm_solver_third_order_update")
    for name in updates:
        update = getattr(sched, name)
        setattr(sched, name, lambda *args, _update=update, sample=None, **kw: _update(*args, sample=current["x"], **kw))
    step = sched.step

    def step64(model_output: Tensor, timestep: Tensor, sample: Tensor, **kw: object) -> object:
        current["x"] = sample
        return step(model_output, timestep, sample, **kw)

    sched.step = step64


def _scheduler(cls: type, steps: int, **config: object) -> object:
    sched = _float64(cls(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", **config))
    sched.set_timesteps(steps)
    return _float64(sched)


def _run_diffusers(sched: object, gmm: GaussianMixture, x: Tensor) -> Tensor:
    """The usual pipeline loop with the exact eps*: eps(x_k, k) = eps*(x, t = k + 1)."""
    for k in sched.timesteps:
        x = sched.step(gmm.eps(x, float(k) + 1.0, PROC), k, x).prev_sample
    return x


def _udm_times(sched: object, end: float = 0.0) -> list[float]:
    """udm's explicit grid for a scheduler's timesteps: t = k + 1, then ``end`` (0 = clean data)."""
    return [float(k) + 1.0 for k in sched.timesteps] + [end]


def _run_udm(sampler: str, gmm: GaussianMixture, x: Tensor, times: list[float], **options: object) -> tuple[Tensor, int]:
    den = gmm.denoiser(PROC, "eps")
    out, info = udm.sample(den, sampler=sampler, times=times, x_T=x, dtype=torch.float64, return_info=True, **options)
    return out, info["nfe"]


# ----------------------------------------------------------------------------- schedules and the DDPM posterior


@pytest.mark.parametrize(
    ("kind", "diffusers_kind"), [("linear", "linear"), ("scaled_linear", "scaled_linear"), ("cosine", "squaredcos_cap_v2")]
)
def test_alphas_cumprod_match_ddpm_scheduler(kind: str, diffusers_kind: str) -> None:
    """DDPMSchedule's float64 table equals diffusers' float32 one to float32 precision (N roundings of 2^-24)."""
    ref = diffusers.DDPMScheduler(beta_schedule=diffusers_kind).alphas_cumprod.to(torch.float64)
    ours = DDPMSchedule(kind).alphas_cumprod
    assert ours.shape == ref.shape
    assert float(((ours - ref) / ours).abs().max()) < 1000 * 2.0**-24
    assert float((ours - ref).abs().max()) < 1e-6


@pytest.mark.parametrize("prediction", ["sample", "epsilon"])
def test_ddpm_posterior_matches_ddpm_scheduler(prediction: str) -> None:
    """process.posterior(x_t, x0, t, t - 1) is the mean and fixed_small variance of DDPMScheduler.step (DDPM eq. 7)."""
    sched = _float64(diffusers.DDPMScheduler(variance_type="fixed_small", clip_sample=False, prediction_type=prediction))
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(5, 3, generator=g, dtype=torch.float64)
    x0 = torch.randn(5, 3, generator=g, dtype=torch.float64)
    for k in (0, 1, 9, 499, 998, 999):
        t = k + 1.0
        mean, var = PROC.posterior(x_t, x0, t, t - 1.0)
        ref_var = sched._get_variance(k)
        a, s = AC[k].sqrt(), (1.0 - AC[k]).sqrt()
        out = x0 if prediction == "sample" else (x_t - a * x0) / s
        prev = sched.step(out, k, x_t, generator=torch.Generator().manual_seed(k)).prev_sample
        noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
        ref_mean = prev - (ref_var.sqrt() * noise if k > 0 else 0.0)
        assert float((var - ref_var).abs().max()) < 1e-10, k
        assert float((mean - ref_mean).abs().max()) < 1e-10, k


# ----------------------------------------------------------------------------- deterministic samplers vs schedulers


@pytest.mark.parametrize(("spacing", "steps"), [("trailing", 10), ("trailing", 25), ("leading", 7), ("leading", 10)])
def test_ddim_matches_ddim_scheduler(spacing: str, steps: int) -> None:
    """ddim(eta=0) equals DDIMScheduler(set_alpha_to_one=True).

    "trailing" only with steps dividing 1000: DDIMScheduler always steps from k to k - 1000 // steps,
    which is not the next trailing timestep otherwise.
    """
    gmm, x = _gmm(2), _noise(16, 2)
    sched = _scheduler(diffusers.DDIMScheduler, steps, clip_sample=False, set_alpha_to_one=True, timestep_spacing=spacing)
    ours, nfe = _run_udm("ddim", gmm, x, _udm_times(sched), eta=0.0)
    assert nfe == steps
    assert float((ours - _run_diffusers(sched, gmm, x)).abs().max()) < ATOL


@pytest.mark.parametrize(
    ("order", "spacing", "steps"),
    [(2, "trailing", 10), (2, "linspace", 7), (2, "leading", 20), (3, "trailing", 10), (3, "linspace", 6), (3, "trailing", 20)],
)
def test_dpmpp_matches_dpm_solver_multistep(order: int, spacing: str, steps: int) -> None:
    """dpmpp_2m / dpmpp_3m(diffusers_compat) equal DPMSolverMultistepScheduler (dpmsolver++, midpoint, final sigma 0)."""
    gmm, x = _gmm(4), _noise(16, 4)
    sched = _scheduler(
        diffusers.DPMSolverMultistepScheduler, steps, algorithm_type="dpmsolver++", solver_order=order,
        solver_type="midpoint", final_sigmas_type="zero", lower_order_final=True, timestep_spacing=spacing,
    )
    _keep_float64_sample(sched)
    opts = {"diffusers_compat": True} if order == 3 else {}
    ours, nfe = _run_udm(f"dpmpp_{order}m", gmm, x, _udm_times(sched), **opts)
    assert nfe == steps
    assert float((ours - _run_diffusers(sched, gmm, x)).abs().max()) < ATOL


@pytest.mark.parametrize(("spacing", "steps"), [("trailing", 10), ("linspace", 7), ("leading", 20), ("trailing", 30)])
def test_dpmpp_2m_sde_matches_sde_dpmsolver_fed_the_same_increments(spacing: str, steps: int) -> None:
    """dpmpp_2m_sde equals DPMSolverMultistepScheduler (sde-dpmsolver++, order 2, midpoint) given the same noise.

    diffusers takes each step's noise as ``variance_noise``: here the standardized
    increment of udm's per-sample Brownian path over the step, in w = 1/sigma~^2,
    which is what udm draws itself from the same seeds.
    """
    from udm.brownian import BrownianPath

    gmm, x = _gmm(4), _noise(16, 4)
    sched = _scheduler(
        diffusers.DPMSolverMultistepScheduler, steps, algorithm_type="sde-dpmsolver++", solver_order=2,
        solver_type="midpoint", final_sigmas_type="zero", lower_order_final=True, timestep_spacing=spacing,
    )
    _keep_float64_sample(sched)
    path = BrownianPath.from_generator(list(range(16)), x)
    y = x
    for i, k in enumerate(sched.timesteps):
        s0, s1 = float(sched.sigmas[i]), float(sched.sigmas[i + 1])
        z = torch.zeros_like(y) if s1 == 0 else path.normal(1.0 / s0**2, 1.0 / s1**2)
        y = sched.step(gmm.eps(y, float(k) + 1.0, PROC), k, y, variance_noise=z).prev_sample
    ours, nfe = _run_udm("dpmpp_2m_sde", gmm, x, _udm_times(sched), seeds=list(range(16)))
    assert nfe == steps
    assert float((ours - y).abs().max()) < ATOL
    other, _ = _run_udm("dpmpp_2m_sde", gmm, x, _udm_times(sched), seeds=list(range(1, 17)))
    assert float((other - y).abs().max()) > 0.01  # the noise matters: other seeds land elsewhere


@pytest.mark.parametrize(
    ("order", "variant", "steps"), [(1, "bh2", 6), (2, "bh2", 5), (2, "bh2", 10), (3, "bh2", 10), (3, "bh2", 20), (4, "bh2", 8)]
)
def test_unipc_matches_unipc_scheduler(order: int, variant: str, steps: int) -> None:
    """unipc equals UniPCMultistepScheduler (predict_x0, UniC on every step, final sigma 0) at one NFE per step."""
    gmm, x = _gmm(4), _noise(16, 4)
    sched = _scheduler(
        diffusers.UniPCMultistepScheduler, steps, solver_order=order, solver_type=variant, timestep_spacing="trailing"
    )
    ours, nfe = _run_udm("unipc", gmm, x, _udm_times(sched), order=order, variant=variant)
    assert nfe == steps
    assert float((ours - _run_diffusers(sched, gmm, x)).abs().max()) < ATOL


def test_unipc_bh1_matches_and_reaches_clean_data() -> None:
    """B(h) = h: parity with diffusers on a grid ending at k = 0; diffusers' own step into sigma = 0 returns NaN (0 * B(inf))."""
    gmm, x = _gmm(2), _noise(16, 2)
    sched = _scheduler(diffusers.UniPCMultistepScheduler, 10, solver_order=3, solver_type="bh1", final_sigmas_type="sigma_min")
    ours, _ = _run_udm("unipc", gmm, x, _udm_times(sched, end=1.0), order=3, variant="bh1")
    assert float((ours - _run_diffusers(sched, gmm, x)).abs().max()) < ATOL
    to_zero = _scheduler(diffusers.UniPCMultistepScheduler, 10, solver_order=3, solver_type="bh1", final_sigmas_type="zero")
    assert torch.isnan(_run_diffusers(to_zero, gmm, x)).all()
    ours, _ = _run_udm("unipc", gmm, x, _udm_times(to_zero), order=3, variant="bh1")
    assert torch.isfinite(ours).all()


# ----------------------------------------------------------------------------- orders of accuracy


def _gaussian_case() -> tuple[GaussianMixture, udm.GaussianProcess, Tensor, float, float, Callable[[Tensor], Tensor]]:
    """N(mu, s^2 I) data on the continuous VP process: the PF-ODE flow is closed form (THEORY §5.3, item 2).

    In y = x/alpha and u = sigma/alpha: y(u1) - mu = (y(u0) - mu) sqrt((s^2 + u1^2)/(s^2 + u0^2)).
    """
    proc = udm.get_process("vp")
    mu, s = torch.tensor([0.3, -0.5], dtype=torch.float64), 0.5
    gmm = GaussianMixture([1.0], mu[None], torch.tensor([s * s]))
    t0, t1 = 0.9, 0.02
    u0, u1 = float(proc.sigma_tilde(t0)), float(proc.sigma_tilde(t1))

    def exact(x: Tensor) -> Tensor:
        y = x / float(proc.alpha(t0))
        return (mu + (y - mu) * math.sqrt((s * s + u1 * u1) / (s * s + u0 * u0))) * float(proc.alpha(t1))

    return gmm, proc, _noise(8, 2), t0, t1, exact


@pytest.mark.parametrize(
    ("sampler", "options", "expected"),
    [
        ("dpmpp_2m", {}, 2.0),
        ("dpmpp_3m", {}, 3.0),
        ("dpmpp_3m", {"diffusers_compat": True}, 2.0),
        ("unipc", {"order": 1}, 2.0),
        ("unipc", {"order": 2}, 3.0),
        ("unipc", {"order": 3}, 4.0),
        ("unipc", {"order": 3, "variant": "bh1"}, 4.0),
        ("unipc", {"order": 3, "corrector": False}, 3.0),
    ],
)
def test_convergence_order_on_gaussian_data(sampler: str, options: dict, expected: float) -> None:
    """Observed order log2(err(n)/err(2n)) on a log-SNR grid: 3M is 3 (its diffusers form 2), UniPC-p is p + 1."""
    gmm, proc, x, t0, t1, exact = _gaussian_case()
    ref = exact(x)
    errs = []
    for n in (128, 256):
        times = udm.get_grid("logsnr", proc, n, t_start=t0, t_end=t1)[:-1]
        out = udm.sample(
            gmm.denoiser(proc, "eps"), sampler=sampler, times=times, x_T=x, dtype=torch.float64,
            lower_order_final=False, **options,
        )
        errs.append(float((out - ref).abs().max()))
    assert abs(math.log2(errs[0] / errs[1]) - expected) < 0.35


def test_dpmpp_3m_is_exact_for_quadratic_data_prediction() -> None:
    """Once warmed up, a 3M step integrates a data prediction quadratic in lambda exactly; the diffusers form does not.

    The 'denoiser' returns q(lambda) v for a fixed vector v, so the exact step is
    x_s = (sigma_s/sigma_t) x_t + sigma_s [F(lambda_s) - F(lambda_t)] v with
    F(u) = e^u (a + b (u - 1) + c (u^2 - 2u + 2)), the antiderivative of e^u q(u).
    The state error is then only carried, times sigma_s/sigma_t, from step to step,
    so the error left by the two warm-up steps must reach the end unchanged but for that factor.
    """
    proc = udm.get_process("vp")
    a, b, c = 0.3, -0.2, 0.15
    vec = torch.tensor([[1.0, -2.0]], dtype=torch.float64)

    def lam(t: float) -> float:
        return 0.5 * float(proc.log_snr(t))

    def denoiser(x: Tensor, t: float) -> Tensor:
        u = lam(t)
        return (a + b * u + c * u * u) * vec.expand_as(x)

    def antiderivative(u: float) -> float:
        return math.exp(u) * (a + b * (u - 1) + c * (u * u - 2 * u + 2))

    ts = [0.8, 0.6, 0.45, 0.3, 0.2, 0.1]
    exact = [vec.clone()]
    for t, s in zip(ts[:-1], ts[1:]):
        sig_s = float(proc.sigma(s))
        exact.append((sig_s / float(proc.sigma(t))) * exact[-1] + sig_s * (antiderivative(lam(s)) - antiderivative(lam(t))) * vec)
    carry = float(proc.sigma(ts[-1])) / float(proc.sigma(ts[2]))
    fn = udm.SAMPLERS.get("dpmpp_3m")
    for compat in (False, True):
        states: dict[int, Tensor] = {}

        def keep(info: dict, states: dict[int, Tensor] = states) -> None:
            states[info["i"]] = info["x"]

        grid = torch.tensor(ts, dtype=torch.float64)
        out = fn(denoiser, proc, vec.clone(), grid, lower_order_final=False, diffusers_compat=compat, callback=keep)
        warm_up_error = states[1] - exact[2]
        added = float((out - exact[-1] - carry * warm_up_error).abs().max())
        assert (added > 1e-4) if compat else (added < 1e-12)


def test_final_ab2_step_into_clean_data_is_higher_order() -> None:
    """From sigma~ = u into clean data, x0_hat (final_order=1) errs by O(u^2); AB2 in sigma~ by O(u^3) or better.

    Gaussian data: eps* along the flow is odd in sigma~ (eps ~ y0 sigma~ / s^2), so
    integral_0^u (eps - eps(u)) dsigma~ = O(u^2) while its linear extrapolation leaves O(u^4).
    A fine log-SNR grid down to u makes the error of the other steps negligible.
    """
    gmm, proc, x, _, _, _ = _gaussian_case()
    mu, s, t0 = gmm.means[0], 0.5, 0.5
    u0 = float(proc.sigma_tilde(t0))
    clean = mu + (x / float(proc.alpha(t0)) - mu) * (s / math.sqrt(s * s + u0 * u0))
    errs: dict[int, list[float]] = {1: [], 2: []}
    for u in (0.04, 0.02):
        t1 = float(proc.t_from_sigma_tilde(u))
        times = torch.cat([udm.get_grid("logsnr", proc, 400, t_start=t0, t_end=t1)[:-1], torch.zeros(1, dtype=torch.float64)])
        for final_order in (1, 2):
            out = udm.sample(
                gmm.denoiser(proc, "eps"), sampler="unipc", times=times, x_T=x, dtype=torch.float64,
                order=3, lower_order_final=False, final_order=final_order,
            )
            errs[final_order].append(float((out - clean).abs().max()))
    assert abs(math.log2(errs[1][0] / errs[1][1]) - 2.0) < 0.2
    assert math.log2(errs[2][0] / errs[2][1]) > 3.0
    assert errs[2][1] < errs[1][1] / 100


@pytest.mark.parametrize(
    ("name", "grid"),
    [("vp", "logsnr"), ("ve", "logsnr"), ("edm", "karras"), ("rectified_flow", "uniform"), ("vp_cosine", "logsnr"), ("subvp", "logsnr")],
)
def test_exponential_integrators_on_every_gaussian_process(name: str, grid: str) -> None:
    """dpmpp_3m and unipc work on any alpha/sigma schedule, including alpha = 0 at the start (rectified flow).

    Against an RK45 solution on the same grid (which also ends with the x0_hat step), both must
    be accurate and beat first-order DDIM by a wide margin at 40 steps.
    """
    proc = udm.get_process(name)
    gmm = GaussianMixture([0.6, 0.4], [[1.0, 0.0], [-1.0, 0.5]], [0.1, 0.2])
    den = gmm.denoiser(proc, "velocity" if name == "rectified_flow" else "eps")
    x_T = _noise(64, 2, seed=0) * float(proc.sigma(proc.t_max))

    def run(sampler: str, **options: object) -> Tensor:
        return udm.sample(den, sampler=sampler, steps=40, grid=grid, x_T=x_T, dtype=torch.float64, **options)

    ref = run("rk45", rtol=1e-8, atol=1e-8)
    ddim_err = float((run("ddim") - ref).pow(2).mean().sqrt())
    for sampler, options in (("dpmpp_3m", {}), ("unipc", {"order": 3})):
        err = float((run(sampler, **options) - ref).pow(2).mean().sqrt())
        assert err < 5e-3 and err < ddim_err / 5, (sampler, err, ddim_err)
