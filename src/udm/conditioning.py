"""Conditioning on observed data, one implementation for every process (THEORY §2.1, §3.1).

Part 9 conditions a reverse step on y by Bayes, p(x_s | x_t, y) ∝ p(x_s | x_t) p(y | x_s)
(§2.1). When y is a part of the data itself, observed exactly or through a known
operator, three ways of using that rule need nothing but the Process protocol and
the denoiser, so every process and every sampler gets them:

* **Replacement** (inpainting; Song et al. 2021, Lugmayr et al. 2022). Observed
  coordinates (mask m, 1 = observed, boolean or soft in [0, 1]) are known at every
  time: after each reverse step to time s the sampler's state becomes

      x_s <- m * F_s(y, eps_s) + (1 - m) * x_s,     eps_s ~ q fresh,

  with the process's own forward map (``Process.observe``: F_s(y, eps) by default,
  the tokens themselves for token processes, which keep observed tokens fixed).
  :class:`Replacement` is that map; ``udm.sample(..., project=Replacement(...))``
  hands it to the sampler, whose every step ends in
  :func:`udm.samplers.common.report`, which applies it and returns the new state.
  The noise comes from the run's generator, so seeds stay reproducible. At the
  clean end F_0(y, eps) = y, so a continuous process returns y exactly in the
  observed coordinates (hard mask; a cold process with a constant sigma > 0
  has F_0(y, eps) = y + sigma eps, its samples' own noise). The start x_T is
  projected too (``udm.sample``), so the first denoiser call sees y. Where
  F_t mixes coordinates (blur, pooling) the observed coordinates of F_t(y, eps)
  depend on data near the mask that is not observed: the step's x0_hat stands
  in for it (y's own entries at the start, before there is one).

  *Tokens.* On the mask process the projected state is a genuine state: the
  observed tokens are visible, the rest masked or revealed. It can hold fewer
  masks than the grid time allows (the ``count`` schedule: t *is* the number
  of masks; t = 1 on a continuous schedule: all masked), so samplers evaluate
  the denoiser at ``Process.state_time``, the time the state shows; the mask
  posterior depends on the visible tokens only, so infill is then exactly as
  exact as unconditional sampling (tests/test_conditioning_tokens.py: the
  exact conditional to chi-square level for K1 and K0 with an exact draw of
  x0, and K1 one position per step with exact marginals). On the count
  schedule a state with k masks at grid time t > k reveals nothing until the
  grid passes k (K1 keeps min(k, s) of them). MaskGIT's confidence order is
  not exact, with or without y. The edit process is biased: its denoiser
  cannot be told that the observed tokens are clean, so it explains them as
  possibly replaced (exact only where observed and hidden tokens are
  independent). A process that diffuses an encoding (the encoder model,
  THEORY §4.5) has no observed coordinates in its states and is refused.

  Replacement is not exact Bayes. The unobserved part is updated with the joint
  model's x0_hat(x_t), which conditions on the *noisy* observed part
  F_t(y, eps) instead of on y: it uses p_t(x_u | x_o = F_t(y, eps)) where the
  posterior needs p_t(x_u | y). Where observed and unobserved coordinates are
  independent under p_t (independent data, Gaussian noise) the two agree; where they are correlated the early steps steer the
  unobserved part by a blurred y and the result is biased toward the prior, with
  any number of steps (tests/test_conditioning.py and benchmarks/conditioning_gmm.py
  measure it). **RePaint resampling** (``resample=r``, ``jump=j``) reduces it:
  after every j steps t_a -> t_b the state is sent back up with the forward
  transition q(x_{t_a} | x_{t_b}) (x_t = (a_t/a_s) x_s + sqrt(s_t^2 - (a_t/a_s)^2 s_s^2) eps
  for Gaussian processes, ``ForwardTransition``) and the j steps are run again,
  r times in all; each round trip lets the unobserved part adjust to the
  observation it has already met. A process without a forward transition
  (token, cold, non-Gaussian linear processes) only has r = 1.

  *Multistep samplers* (``dpmpp_2m``, ``dpmpp_3m``, ``unipc``) keep their
  history of x0_hat: every entry was evaluated at a projected state, and each
  update is coordinate-wise affine in (x, x0_hat history), so the observed
  coordinates of an unprojected update reach the unobserved ones only through
  later denoiser calls, which all see projected states. The fresh noise makes
  x0_hat along the path rough, though, so the extrapolation no longer has its
  order; UniPC's corrector re-solves x_t from the previous state and so undoes
  the projection at t, but its observed coordinates feed only the observed
  coordinates of the next prediction, which the next projection replaces (with
  a soft mask the corrector's share 1 - m survives). Under RePaint every
  segment is a fresh sampler call, so the history restarts after each jump.
* **SDEdit** (image-to-image; Meng et al. 2022): start from F_{t0}(y, eps) at an
  intermediate time and run any sampler down to clean data. ``strength`` in
  (0, 1] picks t0 on the grid the sampler would run unconditionally (strength 1:
  its start, from the prior, exactly as unconditional sampling from the same
  noise; strength -> 0: the clean end, which returns y). :func:`sdedit`.
* **Posterior sampling** for y = A x0 + sigma_y n with a known differentiable
  operator A (DPS, Chung et al. 2023): the energy log p(y | x0_hat(x_t)) in the
  x0-form gradient guidance of :mod:`udm.guidance` (:class:`PosteriorGuidance`;
  the step rule is stated there).

The exact posterior of a Gaussian-mixture prior under a linear observation is
:meth:`udm.theory.GaussianMixture.condition`, the oracle of the tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from . import rng
from .errors import ConfigError
from .denoiser import Denoiser
from .guidance import ENDPOINT_SIGMA_TILDE, EnergyGuidance
from .processes.base import ForwardTransition, Process, require, time_tensor
from .samplers.run import process_of, resolve_generator, resolve_grid, sample

Tensor = torch.Tensor


class Replacement:
    """Replacement inpainting, x_t <- m * observe(y, t) + (1 - m) * x_t (module docstring; THEORY §2.1, §3.1).

    ``y`` is the observation as a batch of data (its unobserved entries are
    ignored); ``mask`` is 1 (True) where y is observed and broadcasts to the
    states: a boolean mask replaces exactly, a float mask in [0, 1] blends
    (continuous data only). A :class:`~udm.samplers.run.Projection`: pass it as
    ``udm.sample(..., project=Replacement(process, y, mask))``.
    """

    def __init__(self, process: Process, y: Tensor, mask: Tensor) -> None:
        y, mask = torch.as_tensor(y), torch.as_tensor(mask)
        self.shape = process.state_shape(y.shape)
        if self.shape != tuple(y.shape):
            raise ConfigError(
                f"process {process.name!r} diffuses an encoding of shape {self.shape} of data of shape {tuple(y.shape)}, "
                "so observed data are not coordinates of its states: replacement (inpainting, infill) is not available for it"
            )
        try:
            broadcast = torch.broadcast_shapes(mask.shape, self.shape)
        except RuntimeError:
            broadcast = None
        if broadcast != self.shape:
            raise ConfigError(
                f"the mask (shape {tuple(mask.shape)}) must broadcast to the observation y (shape {tuple(self.shape)})"
            )
        if mask.dtype != torch.bool:
            if not (y.is_floating_point() and mask.is_floating_point()):
                raise ConfigError(f"a soft mask blends, so it needs float data and a float mask; got y {y.dtype}, mask {mask.dtype}")
            if not bool(((mask >= 0) & (mask <= 1)).all()):
                raise ConfigError("a soft mask must lie in [0, 1] (1 = observed)")
        self.process, self.y, self.mask = process, y, mask

    def __call__(
        self, x: Tensor, t: float, *, generator: rng.GeneratorLike = None, x0_hat: Tensor | None = None
    ) -> Tensor:
        """The state x_t with its observed part replaced by the observation at time t.

        ``x0_hat`` (the sampler's clean estimate, when it has one of the state's
        shape) fills y's unobserved entries before ``observe``: a degradation
        that mixes coordinates (blur, pooling) makes the observed coordinates of
        F_t(y, eps) depend on unobserved data near the mask, and the current
        estimate is what the sampler knows of them (y itself wherever a soft
        mask is above 0). Without it (the start) y's own unobserved entries
        stand in. A coordinate-wise F_t (Gaussian paths, fade, tokens) gives the
        same result either way.
        """
        if self.shape != x.shape:
            raise ConfigError(f"the observation y has shape {tuple(self.shape)} but the samples have shape {tuple(x.shape)}")
        y = self.y.to(device=x.device, dtype=x.dtype) if x.is_floating_point() else self.y.to(x.device)
        mask = self.mask.to(x.device)
        if x0_hat is not None and x0_hat.shape == x.shape:
            y = torch.where(mask if mask.dtype == torch.bool else mask > 0, y, x0_hat.to(y.dtype))
        obs = self.process.observe(y, t, generator=generator)
        if mask.dtype == torch.bool:
            return torch.where(mask, obs, x)
        m = mask.to(x.dtype)
        return m * obs + (1 - m) * x


def _positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def inpaint(
    denoiser: Callable[..., Tensor],
    y: Tensor,
    mask: Tensor,
    sampler: str = "ddpm",
    steps: int | None = None,
    x_T: Tensor | None = None,
    times: Tensor | Sequence[float] | None = None,
    *,
    resample: int = 1,
    jump: int = 1,
    process: Process | None = None,
    grid: str | None = None,
    grid_options: dict | None = None,
    seeds: Sequence[int] | None = None,
    generator: rng.GeneratorLike = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    return_info: bool = False,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    **options: Any,
) -> Tensor | tuple[Tensor, dict[str, Any]]:
    """Samples that agree with ``y`` where ``mask`` is set: replacement, with RePaint resampling if ``resample > 1``.

    ``y`` is a batch of observations of the samples' shape and ``mask`` (1 =
    observed) broadcasts to it (:class:`Replacement`). ``resample=1`` is plain
    replacement: one ``udm.sample`` run with the projection, for any sampler and
    process. ``resample=r > 1`` is RePaint (Lugmayr et al. 2022): the grid is
    cut into segments of ``jump`` steps; each segment is run, its end sent back
    to its start with the process's forward transition, and run again, r times
    in all (the last run is kept), which needs a :class:`ForwardTransition`.
    ``sampler``, ``steps``, ``times``, ``grid``, ``seeds``, ``generator``,
    ``cond`` and the sampler's options are those of :func:`udm.sample`; ``x_T``
    is drawn from the prior when None. ``info["nfe"]`` counts every run.
    The callback's ``i`` counts steps over all runs.
    """
    process = process_of(denoiser, process)
    resample, jump = _positive_int(resample, "resample"), _positive_int(jump, "jump")
    if resample > 1:
        try:
            transition = require(process, ForwardTransition, "RePaint resampling (resample > 1)", "only resample=1 is available")
        except ValueError as error:  # the capability guard's one line, as the user mistake it is
            raise ConfigError(str(error)) from None
    project = Replacement(process, y, mask)
    grid_times = resolve_grid(process, steps, times, grid, grid_options)
    gen = resolve_generator(seeds, generator)
    if x_T is None:
        x_T = process.prior(project.shape, gen, dtype=dtype, device=device)
    run = {"sampler": sampler, "process": process, "generator": gen, "project": project, "return_info": True, **options}
    if resample == 1:
        x, info = sample(denoiser, x_T=x_T, times=grid_times, callback=callback, **run)
        return (x, info) if return_info else x
    done, nfe = 0, 0

    def counted(state: dict[str, Any]) -> None:
        if callback is not None:
            callback({**state, "i": done + state["i"]})

    n = len(grid_times) - 1
    x = x_T
    for a in range(0, n, jump):
        b = min(a + jump, n)
        start = x
        for r in range(resample):
            x, info = sample(denoiser, x_T=start, times=grid_times[a : b + 1], callback=counted, **run)
            done, nfe = done + (b - a), nfe + info["nfe"]
            if r < resample - 1:
                start = transition.transition(x, float(grid_times[b]), float(grid_times[a]), generator=gen)
    return (x, {"nfe": nfe, "times": grid_times}) if return_info else x


def steps_skipped(steps: int, strength: float) -> float:
    """How far into a grid of ``steps`` steps SDEdit starts: (1 - strength) steps, snapped to a grid point within rounding."""
    p = (1.0 - float(strength)) * steps
    if abs(p - round(p)) < 1e-9 * max(steps, 1):  # (1 - 0.8) * 100 = 19.999...: the grid time, not a sliver above it
        p = float(round(p))
    return p


def start_times(times: Tensor, strength: float, process: Process) -> Tensor:
    """The part of the grid ``times`` that SDEdit runs at ``strength`` in (0, 1] (THEORY §3.1: F_t0 is the start).

    With n steps, t0 lies (1 - strength) n steps into the grid, linearly
    interpolated between grid times; the grid from t0 on is t0 followed by the
    grid times below it. Strength 1 is the whole grid; where strength n is an
    integer the grid's last strength n steps (diffusers' img2img rule). On a
    process with integer times t0 is rounded up to the grid time above it.
    """
    if not (isinstance(strength, (int, float)) and 0.0 < float(strength) <= 1.0):
        raise ConfigError(f"strength must lie in (0, 1] (1 = start from the prior), got {strength!r}")
    n = len(times) - 1
    p = steps_skipped(n, strength)
    k = math.floor(p)
    if process.integer_times or p == k:
        return times[k:]
    t0 = times[k] + (p - k) * (times[k + 1] - times[k])
    return torch.cat([t0.reshape(1), times[k + 1 :]])


def sdedit(
    denoiser: Callable[..., Tensor],
    y: Tensor,
    strength: float,
    sampler: str = "dpmpp_2m",
    steps: int | None = None,
    times: Tensor | Sequence[float] | None = None,
    *,
    process: Process | None = None,
    grid: str | None = None,
    grid_options: dict | None = None,
    seeds: Sequence[int] | None = None,
    generator: rng.GeneratorLike = None,
    return_info: bool = False,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    **kwargs: Any,
) -> Tensor | tuple[Tensor, dict[str, Any]]:
    """SDEdit (Meng et al. 2022): corrupt ``y`` to t0 = :func:`start_times` (``strength``) and sample down to clean data.

    The start is F_t0(y, eps) with eps ~ q from the run's generator; at
    strength 1 it is the prior draw an unconditional ``udm.sample`` with the
    same seeds makes (the prior forgets y), so the result is that run's bit for
    bit. As strength -> 0, t0 -> the clean end and the result -> y. ``kwargs``
    go to :func:`udm.sample` (``cond``, ``callback``, ``project`` to inpaint at
    the same time, the sampler's options).
    """
    process = process_of(denoiser, process)
    y = torch.as_tensor(y)
    grid_times = start_times(resolve_grid(process, steps, times, grid, grid_options), strength, process)
    gen = resolve_generator(seeds, generator)
    shape = process.state_shape(y.shape)
    if strength == 1:
        x_start = process.prior(shape, gen, dtype=dtype, device=device)
    else:
        y = y.to(device=device, dtype=dtype) if y.is_floating_point() else y.to(device=device)
        x_start = process.corrupt(y, float(grid_times[0]), process.sample_noise(shape, gen, dtype=dtype, device=device))
    return sample(
        denoiser, sampler, x_T=x_start, times=grid_times, process=process, generator=gen, return_info=return_info, **kwargs
    )


def _operator(operator: Tensor | Callable[[Tensor], Tensor]) -> tuple[Callable[[Tensor], Tensor], Tensor | None]:
    """(A as a function of a batch x0, A as an (m, d) float64 matrix or None)."""
    if callable(operator):
        return operator, None
    matrix = torch.as_tensor(operator, dtype=torch.float64)
    if matrix.ndim != 2:
        raise ConfigError(
            f"the operator A must be an (m, d) matrix acting on flattened data, or a function; got shape {tuple(matrix.shape)}"
        )

    def apply(x0: Tensor) -> Tensor:
        return x0.flatten(1).to(torch.float64) @ matrix.to(x0.device).T

    return apply, matrix


class PosteriorGuidance(EnergyGuidance):
    """Posterior sampling for y = A x0 + sigma_y n (DPS, Chung et al. 2023) as energy guidance (THEORY §2.1, §2.2 G3).

    The energy is the Gaussian log-likelihood of y at the denoiser's estimate,

        log f(x_t) = -1/2 (y - A x0_hat(x_t))^T Sigma_t^{-1} (y - A x0_hat(x_t)),
        Sigma_t = sigma_y^2 I + r_t^2 A A^T,

    differentiated through the denoiser, and :class:`~udm.guidance.GradientGuidance`
    adds gamma (sigma_t^2 / alpha_t) grad log f to x0_hat (its x0 form of the
    score shift).

    **Step rule: the exact Gaussian weighting, not DPS's zeta / |y - A x0_hat|.**
    With ``data_variance=None`` (r_t = 0), Sigma = sigma_y^2 I is DPS's own
    likelihood p(y | x0 = x0_hat(x_t)) with its exact weight 1/sigma_y^2, so at
    gamma = 1 the guide is the score of that likelihood, the same Bayes reading
    as every gradient guide (§2.1), and it is a drift: refining the sampler's
    grid converges to one continuous-time sampler. DPS's normalized step
    zeta / |y - A x0_hat| is a per-step state update whose total effect grows
    with the number of steps (no continuous limit) and has no Bayes meaning, so
    it is not offered. The likelihood at x0_hat ignores the spread of x0 given
    x_t; at high noise that spread dominates, the weight 1/sigma_y^2 overshoots
    and the result is biased (benchmarks/conditioning_gmm.py). ``data_variance=v``
    adds the variance r_t^2 = v sigma~_t^2 / (v + sigma~_t^2) of x0 given x_t for
    data of variance v per coordinate (sigma~ = sigma/alpha): the exact
    p(y | x_t) for Gaussian N(., v I) data, and the Pseudoinverse-Guided
    weighting of Song et al. (2023, PiGDM). With it sigma_y = 0 (a noiseless
    observation) is allowed.

    ``operator`` is an (m, d) matrix acting on flattened data, or a
    differentiable function of a batch (then without ``data_variance``, which
    needs A A^T). ``y`` is one observation of shape (m,) (or the function's
    output shape per sample) or one per sample.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        operator: Tensor | Callable[[Tensor], Tensor],
        y: Tensor,
        sigma_y: float = 0.0,
        *,
        data_variance: float | None = None,
        gamma: float = 1.0,
        endpoint_sigma_tilde: float = ENDPOINT_SIGMA_TILDE,
    ) -> None:
        super().__init__(denoiser, self._log_likelihood, gamma, endpoint_sigma_tilde)
        self.apply, self.matrix = _operator(operator)
        if not (sigma_y >= 0 and math.isfinite(sigma_y)):
            raise ConfigError(f"sigma_y must be a finite noise level >= 0, got {sigma_y!r}")
        if data_variance is not None and not (data_variance > 0 and math.isfinite(data_variance)):
            raise ConfigError(f"data_variance must be a finite variance > 0, got {data_variance!r}")
        if data_variance is None and sigma_y == 0:
            raise ConfigError("sigma_y = 0 gives the likelihood at x0_hat infinite weight; give sigma_y > 0 or data_variance")
        if data_variance is not None and self.matrix is None:
            raise ConfigError("data_variance needs A A^T: give the operator as an (m, d) matrix")
        self.y, self.sigma_y, self.data_variance = torch.as_tensor(y, dtype=torch.float64), float(sigma_y), data_variance
        self._eig: tuple[Tensor, Tensor] | None = None

    def _log_likelihood(self, x: Tensor, t: float | Tensor, cond: object) -> Tensor:
        residual = (self.y.to(x.device) - self.apply(self.denoiser(x, t)).to(torch.float64)).flatten(1)
        if self.data_variance is None:
            return -0.5 * residual.pow(2).sum(1) / self.sigma_y**2
        st2 = self.process.sigma_tilde(time_tensor(t).reshape(-1, 1, 1)).to(x.device) ** 2
        r2 = self.data_variance * st2 / (self.data_variance + st2)
        # Sigma = sigma_y^2 I + r_t^2 A A^T = Q diag(sigma_y^2 + r_t^2 lam) Q^T with A A^T = Q diag(lam) Q^T, decomposed
        # once: no factorization per step (a batched LU solve also hangs multi-threaded MKL builds of torch 2.13).
        if self._eig is None:
            self._eig = torch.linalg.eigh(self.matrix @ self.matrix.T)
        lam, q = (v.to(x.device) for v in self._eig)
        coords = residual @ q
        return -0.5 * (coords.pow(2) / (self.sigma_y**2 + r2.reshape(-1, 1) * lam)).sum(1)
