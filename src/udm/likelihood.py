"""Exact log-likelihood through the continuity equation (THEORY §5.1 eq. 12.1, §5.2 O3, §10.4).

Along the probability-flow ODE dx/dt = f_t(x) of a linear process,
d/dt log p_t(x_t) = -div f_t(x_t) (12.1), so

    log p_t0(x0) = log p_T(x_T) + int_t0^T div f_t(x_t) dt.

The ODE is integrated in one of the variables of :class:`udm.samplers.coordinates.ODEView`:
the process time t (state x, the velocity field), or sigma~ = sigma/alpha (or
log sigma~) with the scaled state y = x/alpha, EDM's sampling variable. In
the scaled variables the density of y is alpha^D times that of x, which adds
D (log alpha_T - log alpha_t0) to the integral. Which variable takes fewer
steps depends on the field and the error norm (benchmarks/RESULTS.md, an
MNIST VP model at rtol 1e-5: 476 steps in sigma~ and 794 in t with the
per-sample norm, 338 and 218 with one batch RMS); the default is sigma~
where alpha > 0 on the whole range, else t.

The divergence is exact (the trace of the Jacobian from D batched
vector-Jacobian products: small D only) or Hutchinson's estimate v^T J v
(Rademacher or Gaussian probes v, drawn once per sample and kept along the
path). With K probes each probe gives an independent unbiased estimate of
the integral, so their spread is a Monte-Carlo standard error and a
Student-t confidence interval.

The whole batch is one tensor state integrated by torchdiffeq's adaptive
Dormand-Prince on the batch's device, with *per-sample* tolerances: a step
is accepted only if every sample's RMS error (state and log-density
increment separately) is within rtol/atol, rather than one RMS over the
concatenated batch, which lets a few samples be integrated loosely.

Bits per dimension for 8-bit images use uniform dequantization
(THEORY §5.2; Theis et al. 2016): pixels k in 0..255 stored as x = k/127.5 - 1
are replaced by x~ = 2 (k + u)/256 - 1 with u ~ U[0, 1)^D, and

    log P(k) >= E_u log p(x~) + D log(2/256),

so bpd = -log p(x~) / (D ln 2) + log2(256/2): the offset is 7 bits for data
on [-1, 1] (8 for data on [0, 1]); :func:`bits_per_dim` takes it explicitly.
Data with L levels (scikit-learn's digits: 17) use cells of width 2/L and the
offset log2(L/2) (:func:`dequantization_offset`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import rng
from .processes.base import LinearPath, Process, require
from .samplers.coordinates import ODEView, finite_level

Tensor = torch.Tensor
DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")


@dataclass
class Likelihood:
    """log p_t0(x0) per sample, with the pieces it is made of and how it was computed.

    ``log_p`` (B,) is the estimate (the mean over probes for Hutchinson);
    ``probe_log_p`` (B, K) the per-probe values; ``stderr`` (B,) their standard
    error (zeros for the exact divergence or K = 1, where it cannot be estimated).
    """

    log_p: Tensor
    probe_log_p: Tensor
    stderr: Tensor
    log_p_T: Tensor
    x_T: Tensor
    nfe: int
    divergence: str

    @property
    def probes(self) -> int:
        return self.probe_log_p.shape[1]

    def interval(self, level: float = 0.95) -> tuple[Tensor, Tensor]:
        """The Student-t confidence interval of log p at ``level`` over the K probes (needs K >= 2).

        It assumes the per-probe integrals are roughly normal; they are skewed,
        so with few probes it under-covers (on a 10-D mixture, tests/test_likelihood.py:
        8 Rademacher probes cover 82% at a nominal 90%, 32 about 88%, 64 about 90%).
        """
        if self.divergence == "exact":
            return self.log_p, self.log_p
        if self.probes < 2:
            raise ValueError("a confidence interval needs at least 2 Hutchinson probes (probes=2 or more)")
        from scipy.stats import t as student_t

        q = float(student_t.ppf(0.5 + level / 2, self.probes - 1))
        return self.log_p - q * self.stderr, self.log_p + q * self.stderr


def prior_log_prob(process: Process, x: Tensor, t: float | None = None) -> Tensor:
    """log p_T(x_T) under the process's prior x_T ~ sigma_T eps (THEORY §5.2 O3 step 2), eps from its noise law.

    This is the approximation the sampler starts from (alpha_T x0 neglected:
    alpha_T ~ 0, or sigma_T much larger than the data).
    """
    process = require(process, LinearPath, "the prior log-density")
    t = process.t_max if t is None else t
    s = float(process.sigma(t))
    d = x[0].numel()
    return process.noise.log_prob(x.to(torch.float64) / s) - d * math.log(s)


def _probes(kind: str, shape: tuple[int, ...], k: int, generator: rng.GeneratorLike, device) -> Tensor:
    """(K, B, ...) probe vectors with E[v v^T] = I: Rademacher signs or standard normals."""
    if kind == "rademacher":
        return 2.0 * torch.floor(2.0 * rng.rand((k, *shape), generator, dtype=torch.float64, device=device)) - 1.0
    return rng.randn((k, *shape), generator, dtype=torch.float64, device=device)


def _basis(shape: tuple[int, ...], device) -> Tensor:
    """(D, B, ...) standard basis vectors, each one applied to every sample of the batch."""
    d = math.prod(shape[1:])
    eye = torch.eye(d, dtype=torch.float64, device=device)
    return eye[:, None, :].expand(d, shape[0], d).reshape(d, *shape)


def _vjp_quadratic_forms(out: Tensor, y: Tensor, vectors: Tensor) -> Tensor:
    """v^T J v for each v in ``vectors`` (K, B, ...) with J = d out / d y per sample: (K, B).

    One batched vector-Jacobian product (``is_grads_batched``, vmap underneath);
    a loop over the vectors where the network does not support vmap.
    """
    v = vectors.to(out.dtype)
    if v.shape[0] == 1:  # one probe: a plain vector-Jacobian product
        (vjp,) = torch.autograd.grad(out, y, grad_outputs=v[0], retain_graph=True)
        return (vjp.to(torch.float64) * vectors[0]).flatten(1).sum(1)[None]
    try:
        (vjp,) = torch.autograd.grad(out, y, grad_outputs=v, is_grads_batched=True, retain_graph=True)
    except (RuntimeError, NotImplementedError):
        vjp = torch.stack([torch.autograd.grad(out, y, grad_outputs=vi, retain_graph=True)[0] for vi in v])
    return (vjp.to(torch.float64) * vectors).flatten(2).sum(2)


class _Field:
    """The augmented ODE (dy/du, d delta_k/du) of the PF-ODE in an ODEView variable; counts evaluations.

    With a ``bar`` (tqdm, total 100) it shows the share of [u0, u1] the solver has reached and the NFE.
    """

    def __init__(
        self, denoiser: Callable, view: ODEView, vectors: Tensor, exact: bool, u_range: tuple[float, float], shape, dtype,
        start: float | None = None, bar=None,
    ) -> None:
        self.denoiser, self.view, self.vectors, self.exact = denoiser, view, vectors, exact
        self.u_lo, self.u_hi = u_range
        self.shape, self.dtype = shape, dtype
        self.start, self.bar = self.u_lo if start is None else start, bar
        self.nfe = 0

    def _report(self, u: float) -> None:
        """Advance the bar to the farthest point of the range the solver has evaluated."""
        span = self.u_hi - self.u_lo
        done = round(100.0 * min(max(abs(u - self.start) / span, 0.0), 1.0), 1) if span > 0 else 100.0
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)
        self.bar.set_postfix_str(f"NFE {self.nfe}", refresh=False)

    def __call__(self, u: Tensor, state: Tensor) -> Tensor:
        b, d = self.shape[0], math.prod(self.shape[1:])
        t = self.view.t(min(max(float(u), self.u_lo), self.u_hi))  # the solver's first-step probe may leave the interval
        with torch.enable_grad():
            y = state[:, :d].reshape(self.shape).to(self.dtype).detach().requires_grad_(True)
            x = self.view.from_state(y, t)
            out = self.view.derivative(self.denoiser(x, t), x, t)
            forms = _vjp_quadratic_forms(out, y, self.vectors)
        self.nfe += 1
        if self.bar is not None:
            self._report(float(u))
        div = forms.sum(0, keepdim=True).T if self.exact else forms.T  # (B, 1) exact, (B, K) Hutchinson
        return torch.cat([out.detach().reshape(b, d).to(torch.float64), div.detach()], 1)


def _per_sample_norm(d: int) -> Callable[[Tensor], Tensor]:
    """The error norm: max over samples of max(RMS of the state error, largest log-density error)."""

    def norm(e: Tensor) -> Tensor:
        if e.ndim != 2:  # torchdiffeq also measures the time variable with this norm
            return e.abs().max()
        state = e[:, :d].pow(2).mean(1).sqrt()
        return torch.maximum(state, e[:, d:].abs().max(1).values).max()

    return norm


def _variable(process: LinearPath, t0: float, t1: float, variable: str | None) -> ODEView:
    """``variable`` or the default: sigma~ where it is finite at both ends (alpha > 0), else the process time."""
    finite = finite_level(process, t0) and finite_level(process, t1)
    if variable is None:
        variable = "sigma" if finite else "t"
    if variable != "t" and not finite:
        raise ValueError(f"alpha vanishes on [{t0:g}, {t1:g}], so the {variable!r} variable is undefined there; use variable='t'")
    view = ODEView(process, variable)
    if view.scaled and view.is_clean(t0):
        raise ValueError(f"sigma_t0 = 0 at t0 = {t0:g}: start the likelihood integral at t0 > 0 (e.g. the process's t_eps)")
    return view


def flow(
    denoiser: Callable,
    x: Tensor,
    t_start: float,
    t_end: float,
    *,
    divergence: str = "hutchinson",
    probes: int = 1,
    probe: str = "rademacher",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    variable: str | None = None,
    generator: rng.GeneratorLike = None,
    per_sample: bool = True,
    progress: bool = False,
) -> tuple[Tensor, Tensor, int]:
    """Carry ``x`` (at time t_start) along the PF-ODE to t_end; return (x_end, delta (B, K), NFE).

    ``delta`` is the integral of div f from t_start to t_end (in the chosen
    variable, with the alpha^D correction of the module docstring), so
    log p_{t_start}(x) = log p_{t_end}(x_end) + delta, in either direction:
    encoding (t_start < t_end) and decoding give deltas of opposite sign.
    K = 1 for the exact divergence. ``per_sample=False`` uses torchdiffeq's
    default error norm (one RMS over the whole batch state) instead of the
    per-sample norm of the module docstring. ``progress`` shows a bar on stderr: the
    share of the integration range done (the adaptive solver's NFE is not known in
    advance) and the NFE so far.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {', '.join(DIVERGENCES)}, got {divergence!r}")
    if probe not in PROBES:
        raise ValueError(f"probe must be one of {', '.join(PROBES)}, got {probe!r}")
    if int(probes) < 1:
        raise ValueError(f"probes must be >= 1, got {probes}")
    from torchdiffeq import odeint

    process = require(denoiser.process, LinearPath, "the likelihood ODE")
    view = _variable(process, min(t_start, t_end), max(t_start, t_end), variable)
    shape = tuple(x.shape)
    exact = divergence == "exact"
    vectors = _basis(shape, x.device) if exact else _probes(probe, shape, int(probes), generator, x.device)
    u0, u1 = view.u(t_start), view.u(t_end)
    from tqdm import tqdm

    bar = tqdm(total=100, desc="likelihood ODE", unit="%", disable=not progress, leave=False, dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n:.0f}/100% [{elapsed}{postfix}]")
    field = _Field(denoiser, view, vectors, exact, (min(u0, u1), max(u0, u1)), shape, x.dtype, u0, bar if progress else None)
    k = 1 if exact else int(probes)
    d = math.prod(shape[1:])
    state0 = torch.cat([view.to_state(x, t_start).reshape(shape[0], d).to(torch.float64), x.new_zeros(shape[0], k, dtype=torch.float64)], 1)
    grid = torch.tensor([u0, u1], dtype=torch.float64, device=x.device)
    options = {"norm": _per_sample_norm(d)} if per_sample else None
    try:
        state1 = odeint(field, state0, grid, rtol=rtol, atol=atol, method=method, options=options)[-1]
        bar.update(100 - bar.n)
        bar.set_postfix_str(f"NFE {field.nfe}")  # the final frame, whatever tqdm's refresh interval skipped
    finally:
        bar.close()
    delta = state1[:, d:]  # int_u0^u1 div_y (dy/du) du: log q_u0(y0) = log q_u1(y1) + delta, in either direction
    if view.scaled:  # log p_t(x) = log q_u(y) - D log alpha_t
        delta = delta + d * (math.log(float(process.alpha(t_end))) - math.log(float(process.alpha(t_start))))
    x_end = view.from_state(state1[:, :d].reshape(shape), t_end).to(x.dtype)
    return x_end, delta, field.nfe


def log_likelihood(
    denoiser: Callable,
    x0: Tensor,
    *,
    t0: float | None = None,
    t1: float | None = None,
    prior: Callable[[Tensor], Tensor] | None = None,
    divergence: str = "hutchinson",
    **solver: object,
) -> Likelihood:
    """log p_t0(x0) = log p_T(x_T) + int_t0^T div f dt for a batch (THEORY §5.2, O3).

    ``t0`` defaults to the process's t_eps (the density of data smoothed to
    t_eps, finite even for singular data), ``t1`` to t_max. ``prior(x_T)``
    returns log p_T per sample; by default :func:`prior_log_prob`, the
    sampler's starting law. For a closed-form check pass the exact marginal.
    ``divergence`` and ``solver`` (probes, probe, rtol, atol, method, variable,
    generator, per_sample, progress) are the options of :func:`flow`; ``progress=True``
    shows the integration's progress and NFE on stderr (silent by default).
    """
    process = require(denoiser.process, LinearPath, "the likelihood ODE")
    t0 = process.t_eps if t0 is None else float(t0)
    t1 = process.t_max if t1 is None else float(t1)
    if not t0 < t1:
        raise ValueError(f"need t0 < t1, got t0={t0:g}, t1={t1:g}")
    x_T, delta, nfe = flow(denoiser, x0, t0, t1, divergence=divergence, **solver)
    log_p_T = (prior_log_prob(process, x_T, t1) if prior is None else prior(x_T)).to(torch.float64)
    per_probe = log_p_T[:, None] + delta
    k = per_probe.shape[1]
    stderr = per_probe.std(1) / math.sqrt(k) if k > 1 else torch.zeros_like(log_p_T)
    return Likelihood(per_probe.mean(1), per_probe, stderr, log_p_T, x_T, nfe, divergence)


def dequantize(x: Tensor, levels: int = 256, generator: rng.GeneratorLike = None) -> Tensor:
    """Uniform dequantization of pixels with ``levels`` values on [-1, 1] (256 for 8-bit; module docstring).

    x = 2k/(L - 1) - 1 becomes x~ = 2 (k + u)/L - 1 with u ~ U[0, 1): the cells
    of width 2/L tile [-1, 1).
    """
    levels = int(levels)
    if levels < 2:
        raise ValueError(f"levels must be >= 2, got {levels}")
    k = ((x.to(torch.float64) + 1.0) * (levels - 1) / 2.0).round().clamp(0, levels - 1)
    u = rng.rand(tuple(x.shape), generator, dtype=torch.float64, device=x.device)
    return (2.0 * (k + u) / levels - 1.0).to(x.dtype)


def dequantization_offset(levels: int = 256) -> float:
    """log2(L / 2): the bits per dimension that cells of width 2/L on [-1, 1] add (7 for 8-bit data)."""
    return math.log2(levels / 2.0)


def bits_per_dim(log_p: Tensor, dim: int, offset: float = 7.0) -> Tensor:
    """-log p / (D ln 2) + offset, the offset from :func:`dequantization_offset` (7 bits for 8-bit data on [-1, 1])."""
    return -log_p / (dim * math.log(2.0)) + offset
