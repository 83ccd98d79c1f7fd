"""Named check cases for ``udm check``: exact (sampler, drift, diffusion, density) quadruples (THEORY §9.3, §7, §8, §10).

Each case is a process with a closed-form marginal p_t, so W1 and W2 of
:mod:`udm.theory.fokker_planck` must pass on it, and a deliberately wrong drift
must fail (a checker that cannot fail checks nothing):

* Gaussian processes on a 2-D Gaussian mixture (§10.1): the forward SDE
  dx = f x dt + g dw (``vp``, ``ve``), the probability-flow ODE f x - 1/2 g^2 score
  (``vp_ode``, ``ve_ode``, ``edm``), and Part 9's family f x - 1/2 (g^2 - s^2) score
  with diffusion s, which preserves p_t for every s (``reverse_family``, §9.3);
* point-mass data (§10.2) for kernel constructions, all ODEs (continuity equation):
  straight lines / CFM (``rectified_flow``, §8.1), the gravity kernel of PFGM
  (``gravity``, §7.1 Solution A), PFGM++'s Student-t kernel (``pfgmpp``, §7.4) and a
  CDF-built scale kernel (``cdf``, §7.1 Solution B).

Each t_range is where the data move and, for point masses, where the kernels of distinct
sources overlap (otherwise W1's standard error rests on a few rare particles; see
:func:`~udm.theory.fokker_planck.weak_form_check`).

``get_case("vp_ode:sign_flip")`` gives a wrong variant (:meth:`Case.wrong`);
:func:`load_field` loads a user's field from ``module:attr`` and holds it to
:data:`FIELD_PROTOCOL` (every way of breaking it is one ConfigError line).
:func:`run_checks` runs a case, :func:`format_table` and :func:`summarize` report
it: a W1 check without power at the given n is "underpowered", never a failure.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch

from . import rng
from .errors import ConfigError
from .processes import get_process, pfgmpp as pfgmpp_process
from .processes.gaussian import GaussianProcess, LinearProcess
from .registry import Registry
from .theory.fokker_planck import (FAMILIES, MIN_EFFECTIVE_N, CheckResult, Density, Diffusion, Drift, Sampler, strong_form_check,
                                   weak_form_check)
from .theory.gmm import GaussianMixture
from .theory.green import GravityGreen, GreenField, GreenFunction, ScaleGreen
from .theory.pointmass import PointMasses

Tensor = torch.Tensor
TimeLike = float | Tensor

#: The wrong drifts a case can be turned into (see :meth:`Case.wrong`).
WRONG_KINDS = {
    "sign_flip": "drift replaced by -drift",
    "wrong_factor": "score/posterior term doubled (g^2 instead of 1/2 g^2 in the PF-ODE)",
    "missing_term": "score/posterior term dropped",
    "no_diffusion": "diffusion dropped (g^2 = 0): the 1/2 g^2 Lap p term is missing",
}

#: 2-D data of the built-in cases: a three-component mixture (§10.1) and three weighted points (§10.2).
MIXTURE = GaussianMixture([0.5, 0.3, 0.2], [[-1.0, 0.5], [1.2, -0.3], [0.2, 1.4]], [[0.09, 0.16], [0.2, 0.1], [0.06, 0.06]])
POINTS = PointMasses([[-1.0, 0.4], [1.1, -0.2], [0.3, 1.3]], [0.5, 0.3, 0.2])


def no_diffusion(t: TimeLike) -> Tensor:
    """g_t^2 = 0: an ODE."""
    return torch.zeros_like(torch.as_tensor(t, dtype=torch.float64))


@dataclass(frozen=True)
class Case:
    """A field with an exact sampler of its marginals: what W1 (and W2, given ``density``) check.

    ``sample(t, n, generator)`` draws n i.i.d. rows of p_t, reparameterized (the same
    generator state gives the same x0 and noise at every t); ``drift(t, x)`` and ``g2(t)``
    define dx = f dt + g dw; ``density(t, x)`` (optional) is p_t. t is a float or an (n,)
    tensor. ``term(t, x)`` is the score/posterior part of the drift, used to build the
    wrong variants; ``wrong_kinds`` lists the variants that differ from the case.
    """

    name: str
    dim: int
    sample: Sampler
    drift: Drift
    g2: Diffusion = no_diffusion
    density: Density | None = None
    t_range: tuple[float, float] = (0.1, 0.9)
    description: str = ""
    families: tuple[str, ...] = FAMILIES
    term: Drift | None = field(default=None, repr=False)
    wrong_kinds: tuple[str, ...] = ()

    def wrong(self, kind: str) -> Case:
        """The case with a wrong drift or diffusion (a negative control that W1 and W2 must reject)."""
        if kind not in self.wrong_kinds:
            valid = ", ".join(self.wrong_kinds) or "none"
            raise ValueError(f"case {self.name!r} has no wrong variant {kind!r}; valid: {valid}")
        drift, term, g2 = self.drift, self.term, self.g2
        sign = -1.0 if kind == "sign_flip" else 1.0
        extra = {"wrong_factor": 1.0, "missing_term": -1.0}.get(kind, 0.0)  # drift + extra * term

        def wrong_drift(t: TimeLike, x: Tensor) -> Tensor:
            out = sign * drift(t, x)
            return out + extra * term(t, x) if extra else out

        g2 = no_diffusion if kind == "no_diffusion" else g2
        return replace(self, name=f"{self.name}:{kind}", drift=wrong_drift, g2=g2, description=f"{self.description} [{WRONG_KINDS[kind]}]",
                       wrong_kinds=())


CHECK_CASES: Registry[Callable[..., Case]] = Registry("check case")


def _column(c: Tensor) -> Tensor:
    """A coefficient (scalar or (n,)) shaped to broadcast against (n, d) points."""
    return c.reshape(-1, 1) if c.ndim else c


def _t64(t: TimeLike) -> Tensor:
    return torch.as_tensor(t, dtype=torch.float64)


# --- Gaussian processes on mixture data (§9.3, §10.1) ------------------------------------------------
def _gaussian_sampler(process: LinearProcess, data: GaussianMixture) -> Sampler:
    def sample(t: float, n: int, generator: rng.GeneratorLike = None) -> Tensor:
        gen = rng.as_generator(generator)
        x0 = data.sample(n, gen)
        eps = rng.randn((n, data.dim), gen, dtype=torch.float64)
        tt = _t64(t)
        return process.alpha(tt) * x0 + process.sigma(tt) * eps

    return sample


def family_case(
    name: str,
    process: GaussianProcess,
    ratio: float,
    t_range: tuple[float, float],
    description: str,
    data: GaussianMixture = MIXTURE,
) -> Case:
    """Part 9's family in forward time (§9.3): drift f x - 1/2 (1 - ratio^2) g^2 score, diffusion s = ratio g.

    ratio = 1 is the forward SDE, ratio = 0 the probability-flow ODE; every ratio keeps
    the marginals p_t = sum_k pi_k N(alpha m_k, alpha^2 S_k + sigma^2 I) of the process.
    """
    if not isinstance(process, GaussianProcess):
        raise ValueError(f"case {name!r} needs a Gaussian process with an SDE, got {type(process).__name__}")
    ratio = float(ratio)
    half = 0.5 * (1.0 - ratio * ratio)

    def term(t: TimeLike, x: Tensor) -> Tensor:
        return -half * _column(process.sde(_t64(t))[1]) * data.score(x, t, process)

    def drift(t: TimeLike, x: Tensor) -> Tensor:
        return _column(process.sde(_t64(t))[0]) * x + term(t, x)

    def g2(t: TimeLike) -> Tensor:
        return ratio * ratio * process.sde(_t64(t))[1]

    def density(t: Tensor, x: Tensor) -> Tensor:
        return torch.exp(data.log_prob(x, t, process))

    moving = abs(float(process.sde(0.5 * sum(t_range))[0])) > 0 or ratio != 1.0
    kinds = (("sign_flip",) if moving else ()) + (("wrong_factor", "missing_term") if ratio != 1.0 else ())
    kinds += ("no_diffusion",) if ratio != 0.0 else ()
    return Case(name, data.dim, _gaussian_sampler(process, data), drift, g2, density, t_range, description,
                term=term if ratio != 1.0 else None, wrong_kinds=kinds)


#: Times at which the Gaussian processes move the mixture data (VP is near its stationary law beyond t ~ 0.6).
GAUSSIAN_RANGES = {"vp": (0.1, 0.5), "ve": (0.2, 0.6), "edm": (0.2, 1.5)}


@CHECK_CASES.register("vp")
def vp() -> Case:
    """VP (OU) forward SDE dx = -1/2 beta x dt + sqrt(beta) dw on mixture data (§9.3)."""
    return family_case("vp", get_process("vp"), 1.0, GAUSSIAN_RANGES["vp"], "VP forward SDE, Gaussian-mixture data")


@CHECK_CASES.register("vp_ode")
def vp_ode() -> Case:
    """VP probability-flow ODE dx/dt = f x - 1/2 g^2 score (§9.3, §5.1)."""
    return family_case("vp_ode", get_process("vp"), 0.0, GAUSSIAN_RANGES["vp"], "VP probability-flow ODE, Gaussian-mixture data")


@CHECK_CASES.register("ve")
def ve() -> Case:
    """VE SDE dx = sqrt(2 sigma' sigma) dw: the heat equation p_t = p_0 * N(0, sigma_t^2 I) (§9.3)."""
    return family_case("ve", get_process("ve"), 1.0, GAUSSIAN_RANGES["ve"], "VE forward SDE (heat equation), Gaussian-mixture data")


@CHECK_CASES.register("ve_ode")
def ve_ode() -> Case:
    """VE probability-flow ODE dx/dt = -sigma' sigma score (§9.3)."""
    return family_case("ve_ode", get_process("ve"), 0.0, GAUSSIAN_RANGES["ve"], "VE probability-flow ODE, Gaussian-mixture data")


@CHECK_CASES.register("edm")
def edm() -> Case:
    """EDM's probability-flow ODE dx/dt = -t score with sigma_t = t."""
    return family_case("edm", get_process("edm"), 0.0, GAUSSIAN_RANGES["edm"], "EDM probability-flow ODE (sigma = t), Gaussian-mixture data")


@CHECK_CASES.register("reverse_family")
def reverse_family(s: float = 0.5, process: str = "vp") -> Case:
    """Part 9's family with diffusion s_t = s g_t: drift f x - 1/2 (g^2 - s_t^2) score preserves p_t (§9.3)."""
    if process not in GAUSSIAN_RANGES:
        raise ValueError(f"reverse_family: process must be one of {', '.join(GAUSSIAN_RANGES)}, got {process!r}")
    return family_case(f"reverse_family(s={s:g}g)", get_process(process), s, GAUSSIAN_RANGES[process],
                       f"reverse-SDE family in forward time, s = {s:g} g, {process} process")


def _family_member(label: str, s: float) -> Callable[[], Case]:
    def build() -> Case:
        return replace(reverse_family(s), name=f"reverse_family_{label}")

    build.__doc__ = f"Part 9's family on the VP process with s = {s:g} g (§9.3)."
    return build


for _label, _s in (("0", 0.0), ("half", 0.5), ("1", 1.0), ("2", 2.0)):
    CHECK_CASES.register(f"reverse_family_{_label}", _family_member(_label, _s))


# --- point-mass data under kernel constructions (§10.2) ------------------------------------------------
def _posterior_term(posterior_mean: Callable[[TimeLike, Tensor], Tensor], process: LinearProcess) -> Drift:
    """(alpha' - alpha sigma'/sigma) E[x0 | x]: the data part of the linear-path velocity."""

    def term(t: TimeLike, x: Tensor) -> Tensor:
        tt = _t64(t)
        a, s, da, ds = process.alpha(tt), process.sigma(tt), process.dalpha(tt), process.dsigma(tt)
        return _column(da - a * ds / s) * posterior_mean(t, x)

    return term


def linear_point_case(name: str, process: LinearProcess, t_range: tuple[float, float], description: str,
                      data: PointMasses = POINTS, families: tuple[str, ...] = FAMILIES) -> Case:
    """x_t = alpha x0 + sigma eps with any noise law q on point masses: f_t(x) = E[alpha' x0 + sigma' eps | x_t = x].

    With eps = (x - alpha x0) / sigma this is (sigma'/sigma) x + (alpha' - alpha sigma'/sigma) E[x0 | x]
    (§8.1, §10.2), exact through the posterior weights w_j propto pi_j q((x - alpha x_j)/sigma).
    """
    d = data.points.shape[1]

    def sample(t: float, n: int, generator: rng.GeneratorLike = None) -> Tensor:
        gen = rng.as_generator(generator)
        x0 = data.sample(n, gen)
        eps = process.sample_noise((n, d), gen, dtype=torch.float64)
        tt = _t64(t)
        return process.alpha(tt) * x0 + process.sigma(tt) * eps

    term = _posterior_term(lambda t, x: data.posterior_mean(x, t, process), process)

    def drift(t: TimeLike, x: Tensor) -> Tensor:
        tt = _t64(t)
        return _column(process.dsigma(tt) / process.sigma(tt)) * x + term(t, x)

    def density(t: Tensor, x: Tensor) -> Tensor:
        return torch.exp(data.log_prob(x, t, process))

    return Case(name, d, sample, drift, no_diffusion, density, t_range, description, families, term,
                ("sign_flip", "wrong_factor", "missing_term"))


def green_case(name: str, green: GreenFunction, t_range: tuple[float, float], description: str,
               data: PointMasses = POINTS, families: tuple[str, ...] = FAMILIES) -> Case:
    """A scale-family Green's function (f_t(x | x0) = (x - x0)/t) on point masses: GreenField's p_t and f_t (§7.1, §7.3).

    The marginal velocity is x/t - E[x0 | x]/t; the wrong variants act on the -E[x0 | x]/t term.
    """
    green_field = GreenField(green, data.points, data.weights)

    def sample(t: float, n: int, generator: rng.GeneratorLike = None) -> Tensor:
        gen = rng.as_generator(generator)
        return green.sample(t, data.sample(n, gen), gen)

    def term(t: TimeLike, x: Tensor) -> Tensor:
        return -green_field.posterior_mean(t, x) / _column(_t64(t))

    return Case(name, green.dim, sample, green_field.velocity, no_diffusion, green_field.density, t_range, description, families, term,
                ("sign_flip", "wrong_factor", "missing_term"))


@CHECK_CASES.register("rectified_flow")
def rectified_flow() -> Case:
    """Straight lines x_t = (1 - t) x0 + t eps (CFM, §8.1): velocity (x - E[x0 | x]) / t, continuity equation."""
    return linear_point_case("rectified_flow", get_process("rectified_flow"), (0.5, 0.9), "rectified flow / CFM straight lines, point-mass data")


@CHECK_CASES.register("gravity")
def gravity() -> Case:
    """PFGM's gravity (Cauchy) kernel (§7.1 Solution A) on point masses, checked with Gaussian bumps only.

    The conditional speed |x - x0| / t has no finite variance under a Cauchy kernel: a
    polynomial's E[phi] does not exist, and a Fourier feature's difference quotient is
    inaccurate for the rare particle moving at ~1e6 (it then carries the whole variance).
    A bump's gradient vanishes far out, so those particles contribute exactly nothing.
    """
    return green_case("gravity", GravityGreen(POINTS.points.shape[1]), (0.5, 1.5), "gravity / Cauchy Green's function (PFGM), point-mass data",
                      families=("bumps",))


@CHECK_CASES.register("pfgmpp")
def pfgmpp(D: float = 8.0) -> Case:
    """PFGM++ (§7.4): x = x0 + sigma eps, eps Student-t with D dof; moments only below order D, so no polynomials."""
    return linear_point_case("pfgmpp", pfgmpp_process(D), (0.8, 1.6), f"PFGM++ Student-t kernel, D = {D:g}, point-mass data",
                             families=("bumps", "fourier"))


@CHECK_CASES.register("cdf")
def cdf(Psi: str | Callable[[Tensor], Tensor] = "tanh") -> Case:
    """A CDF-built scale Green's function psi_t(r) = Psi(r / t) (§7.1 Solution B, §7.2 GF3) on point masses."""
    label = Psi if isinstance(Psi, str) else getattr(Psi, "__name__", "custom")
    return green_case("cdf", ScaleGreen(POINTS.points.shape[1], Psi), (1.25, 2.0), f"CDF-built Green's function Psi = {label}, point-mass data")


# --- lookup ---------------------------------------------------------------------------------------------
def get_case(name: str, **kwargs) -> Case:
    """The registered case ``name`` (factory keyword arguments in ``kwargs``), or ``"name:kind"`` for a wrong variant."""
    base, _, kind = name.partition(":")
    case = CHECK_CASES.get(base)(**kwargs)
    return case.wrong(kind) if kind else case


def case_names(wrong: bool = False) -> list[str]:
    """Registered case names, with every ``name:kind`` wrong variant when ``wrong``."""
    names = CHECK_CASES.names()
    if not wrong:
        return names
    return [full for base in names for full in [base, *(f"{base}:{k}" for k in CHECK_CASES.get(base)().wrong_kinds)]]


def _attribute(obj: object, *names: str) -> object | None:
    for n in names:
        value = getattr(obj, n, None)
        if value is not None:
            return value
    return None


#: What :func:`load_field` promises a user's field, in the words of its errors (docs/likelihood.md, "user fields").
FIELD_PROTOCOL = "sample(t, n, generator) -> (n, d) floats and drift(t, x) -> (n, d) (optional: g2, density(t, x), t_range, dim)"
#: Particles :func:`load_field` draws to probe a user's field before any check runs.
PROBE_N = 4


def _one_line(err: BaseException) -> str:
    """``Type: message`` of an exception raised by user code, on one line."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _describe(value: object) -> str:
    """A short description of what user code returned, for an error message."""
    if isinstance(value, Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {tuple(value.shape)}"
    shape = getattr(value, "shape", None)
    return f"a {type(value).__name__}" + (f" of shape {tuple(shape)}" if shape is not None else "")


class _UserField:
    """A user's field behind the :data:`FIELD_PROTOCOL` checks: every call is guarded, every output checked.

    Anything the user's code raises, and any output of the wrong type, shape or
    finiteness, becomes one :class:`~udm.errors.ConfigError` naming the field spec
    and the function, so ``udm check --field`` never shows a traceback of user code.
    """

    def __init__(self, spec: str, sample: Callable, drift: Callable, g2: object, density: Callable | None) -> None:
        self.spec, self._sample, self._drift, self._g2, self._density = spec, sample, drift, g2, density
        self.dim: int | None = None

    def _error(self, what: str, problem: str, fix: str) -> ConfigError:
        return ConfigError(f"field {self.spec!r}: {what} {problem}; {fix}")

    def _call(self, what: str, fn: Callable, *args: object) -> object:
        try:
            return fn(*args)
        except ConfigError:
            raise
        except Exception as err:  # any failure of user code is the user's to fix, reported in one line
            raise self._error(what, f"raised {_one_line(err)}", f"fix the field ({FIELD_PROTOCOL})") from None

    def _float_tensor(self, what: str, value: object, shape: tuple[int | None, ...], fix: str) -> Tensor:
        """``value`` as float64 if it is a floating tensor (or array) of ``shape`` (None: any size) with finite entries."""
        try:
            out = torch.as_tensor(value)
        except Exception:
            out = None
        ok = (out is not None and out.is_floating_point() and out.ndim == len(shape)
              and all(want is None or got == want for got, want in zip(out.shape, shape)))
        if not ok:
            expected = "(" + ", ".join("d" if want is None else str(want) for want in shape) + ("," if len(shape) == 1 else "") + ")"
            raise self._error(what, f"returned {_describe(value)}, expected a float tensor of shape {expected}", fix)
        out = out.to(torch.float64)
        if not bool(torch.isfinite(out).all()):
            raise self._error(what, "returned NaN or inf", fix)
        return out

    def sample(self, t: float, n: int, generator: rng.GeneratorLike = None) -> Tensor:
        """n rows of p_t from the user's ``sample(t, n, generator)``, with a real ``torch.Generator``."""
        gen = rng.as_generator(generator)
        gen = gen if isinstance(gen, torch.Generator) else torch.Generator().manual_seed(0)
        out = self._call("sample(t, n, generator)", self._sample, t, n, gen)
        x = self._float_tensor("sample(t, n, generator)", out, (n, self.dim), "return one row of floats per particle, (n, d)")
        if self.dim is None:
            self.dim = int(x.shape[1])
        return x

    def drift(self, t: TimeLike, x: Tensor) -> Tensor:
        """f_t at the rows of x from the user's drift, shape-checked."""
        out = self._call("drift(t, x)", self._drift, t, x)
        if isinstance(out, Tensor) and out.requires_grad:  # W2 differentiates through it: keep the graph
            if out.shape != x.shape or not out.is_floating_point():
                raise self._error("drift(t, x)", f"returned {_describe(out)} for x of shape {tuple(x.shape)}",
                                  "return one velocity per particle, of x's shape")
            return out.to(torch.float64)
        return self._float_tensor("drift(t, x)", out, tuple(x.shape), "return one velocity per particle, of x's shape")

    def g2(self, t: TimeLike) -> Tensor:
        """g_t^2 from the user's number or function, as a non-negative float64 tensor of shape () or (n,)."""
        value = self._call("g2(t)", self._g2, t) if callable(self._g2) else self._g2
        n = torch.as_tensor(t).numel()
        try:
            out = torch.as_tensor(value, dtype=torch.float64)
        except Exception:
            out = None
        if out is None or out.shape not in ((), (n,) if torch.as_tensor(t).ndim else ()):
            raise self._error("g2", f"gave {_describe(value)} at t of shape {tuple(torch.as_tensor(t).shape)}",
                              "make g2 a number or a function of t returning one (or one per entry of a tensor t)")
        if not bool(torch.isfinite(out).all()) or bool((out < 0).any()):
            raise self._error("g2", "is negative, NaN or inf", "g2 is g_t^2, a finite number >= 0")
        return out

    def density(self, t: Tensor, x: Tensor) -> Tensor:
        """p_t at the rows of x from the user's density (t of shape (n,)), shape-checked, graph kept for W2."""
        out = self._call("density(t, x)", self._density, t, x)
        if not isinstance(out, Tensor) or out.shape != (x.shape[0],) or not out.is_floating_point():
            raise self._error("density(t, x)", f"returned {_describe(out)} for x of shape {tuple(x.shape)}",
                              "return one differentiable float per row, shape (n,)")
        return out.to(torch.float64)

    def probe(self, t_range: tuple[float, float]) -> int:
        """Call every function once at each end of t_range as the checks will; return the dimension d."""
        gen = torch.Generator().manual_seed(0)
        for t in dict.fromkeys(t_range):
            x = self.sample(t, PROBE_N, gen)
            if x.shape[1] < 1:
                raise self._error("sample(t, n, generator)", "returned points of dimension 0", "return (n, d) points with d >= 1")
            self.drift(t, x)
            self.g2(t)
            if self._density is not None:
                tt = torch.full((PROBE_N,), float(t), dtype=torch.float64)
                self.drift(tt, x)
                self.g2(tt)
                self.density(tt, x)
        return int(self.dim)


def _import_field(spec: str) -> object:
    """The object ``module:attr`` names, with every way of failing as one ConfigError."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"a field spec must look like 'module:attr', got {spec!r}; e.g. udm check --field my_fields:heat")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name.split(".")[0] and err.name != module_name:
            raise ConfigError(f"cannot import module {module_name!r} of field {spec!r}: {_one_line(err)}; "
                              "install what it imports or fix the import") from None
        raise ConfigError(f"cannot import module {module_name!r} of field {spec!r}: no such module; "
                          "run udm check from the folder that holds it or add that folder to PYTHONPATH") from None
    except Exception as err:  # a syntax error or anything the module raises at import time
        raise ConfigError(f"cannot import module {module_name!r} of field {spec!r}: {_one_line(err)}; fix the module") from None
    if not hasattr(module, attr):
        raise ConfigError(f"module {module_name!r} has no attribute {attr!r} (field spec {spec!r}); "
                          f"name an object with {FIELD_PROTOCOL}")
    return getattr(module, attr)


def load_field(spec: str) -> Case:
    """A user field from ``"module:attr"``: an object (or a zero-argument factory of one) to check.

    The protocol (docs/likelihood.md, "user fields"; :data:`FIELD_PROTOCOL`). Required:
    ``sample(t, n, generator)``, n i.i.d. rows of p_t as floats (n, d), where t is a float
    and ``generator`` a ``torch.Generator`` to draw all randomness from (the same state must
    give the same x0 and noise at every t: W1's common random numbers); and
    ``drift(t, x)`` (or ``velocity(t, x)``), f_t at the rows of x (n, d), with t a float
    or, for W2, an (n,) tensor. Optional: ``g2`` (g_t^2, a number or a function of t;
    default 0, an ODE), ``density(t, x)`` (p_t, (n,), differentiable; enables W2),
    ``t_range`` (default (0.1, 0.9)), ``dim`` (default: from a sample), ``name``,
    ``description``, ``families``.

    Every function is called once at both ends of t_range before any check runs, and
    guarded in every later call: a module that does not import, a missing attribute,
    user code that raises, or an output of the wrong type or shape is one
    :class:`~udm.errors.ConfigError` naming the spec, never a traceback.
    """
    obj = _import_field(spec)
    if isinstance(obj, type) or (callable(obj) and _attribute(obj, "sample") is None):
        try:
            obj = obj()
        except Exception as err:
            raise ConfigError(f"field {spec!r}: calling it to build the field raised {_one_line(err)}; "
                              "make it an object, a class or a function that takes no arguments") from None
    if isinstance(obj, Case):
        return obj
    sample, drift = _attribute(obj, "sample"), _attribute(obj, "drift", "velocity")
    missing = [what for what, got in (("sample(t, n, generator)", sample), ("drift(t, x) or velocity(t, x)", drift)) if not callable(got)]
    if missing:
        raise ConfigError(f"field {spec!r} ({type(obj).__name__}) is missing {' and '.join(missing)}; "
                          "optional: g2, density(t, x), t_range, dim")
    g2 = _attribute(obj, "g2")
    g2 = 0.0 if g2 is None else g2
    number = isinstance(g2, (int, float)) and not isinstance(g2, bool)
    if not (callable(g2) or number) or (number and not (math.isfinite(g2) and g2 >= 0)):
        raise ConfigError(f"field {spec!r}: g2 must be a number >= 0 or a function of t, got {g2!r}; "
                          "give g_t^2 (0 for an ODE)")
    density = _attribute(obj, "density")
    if density is not None and not callable(density):
        raise ConfigError(f"field {spec!r}: density must be a function density(t, x), got {type(density).__name__}; "
                          "give p_t or leave it out")
    try:
        t_range = tuple(float(v) for v in (_attribute(obj, "t_range") or (0.1, 0.9)))
    except (TypeError, ValueError):
        t_range = ()
    if len(t_range) != 2 or not t_range[0] <= t_range[1] or not all(math.isfinite(v) for v in t_range):
        raise ConfigError(f"field {spec!r}: t_range must be two finite times (t_lo, t_hi) with t_lo <= t_hi, "
                          f"got {_attribute(obj, 't_range')!r}; fix t_range")
    families = _attribute(obj, "families") or FAMILIES
    families = (families,) if isinstance(families, str) else tuple(families)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        raise ConfigError(f"field {spec!r}: unknown test-function family {unknown[0] if unknown else None!r}; "
                          f"choose from {', '.join(FAMILIES)}")
    field = _UserField(spec, sample, drift, g2, density)
    dim = _attribute(obj, "dim")
    if dim is not None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ConfigError(f"field {spec!r}: dim must be an integer >= 1, got {dim!r}; fix dim or leave it out")
        field.dim = dim
    dim = field.probe(t_range)
    return Case(str(_attribute(obj, "name") or spec), dim, field.sample, field.drift, float(g2) if number else field.g2,
                field.density if density is not None else None, t_range, str(_attribute(obj, "description") or ""), families)


def resolve_case(spec: str) -> Case:
    """A registered case or wrong variant (``vp_ode``, ``vp_ode:sign_flip``), else a user field ``module:attr``."""
    return get_case(spec) if spec.partition(":")[0] in CHECK_CASES else load_field(spec)


# --- running ----------------------------------------------------------------------------------------------
def check_times(case: Case, times: int) -> list[float]:
    """``times`` equispaced times across the case's t_range (its midpoint when times = 1)."""
    lo, hi = case.t_range
    if times < 1:
        raise ValueError(f"times must be >= 1, got {times}")
    return [0.5 * (lo + hi)] if times == 1 else [lo + (hi - lo) * i / (times - 1) for i in range(times)]


#: ``udm check``'s exit status when nothing failed but some check was underpowered (0: all passed, 1: a failure).
EXIT_UNDERPOWERED = 3


def run_checks(
    case: Case,
    *,
    n: int = 20000,
    times: int = 3,
    families: Sequence[str] | None = None,
    alpha: float = 0.01,
    seed: int = 0,
    count: int = 16,
    strong: bool = True,
    strong_points: int = 64,
    tol: float = 1e-6,
    progress: bool = False,
) -> list[CheckResult]:
    """W1 for every test-function family and time, then W2 at the same times when the case has a density (THEORY §9.2).

    ``alpha`` is the familywise level of the case's W1 checks: each of the m = families x times
    checks runs at alpha / m (Bonferroni), so a correct case fails anywhere with probability <= alpha.
    A W1 result whose sample is too small to tell a right field from a wrong one reports
    ``verdict == "underpowered"`` (:attr:`~udm.theory.fokker_planck.CheckResult.underpowered`);
    ``n`` below :data:`~udm.theory.fokker_planck.MIN_EFFECTIVE_N` is refused, since then every
    W1 result would be. ``progress`` shows a bar over the checks on stderr.
    """
    if isinstance(n, bool) or int(n) != n or n < MIN_EFFECTIVE_N:
        raise ConfigError(f"n = {n} particles is below the {MIN_EFFECTIVE_N:.0f} a weak-form z-score needs; "
                          "use the default n = 20000 (a few thousand at least for the checks to have power)")
    if isinstance(times, bool) or int(times) != times or times < 1:
        raise ConfigError(f"times must be an integer >= 1, got {times!r}; give how many times to check per case")
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must lie in (0, 1), got {alpha!r}; give the familywise false-failure level, e.g. 0.01")
    fams = tuple(families or case.families)
    grid = check_times(case, times)
    level = alpha / (len(fams) * len(grid))
    weak = [(t, fam) for t in grid for fam in fams]
    strong_grid = grid if strong and case.density is not None else []
    from tqdm import tqdm

    results = []
    with tqdm(total=len(weak) + len(strong_grid), desc=f"check {case.name}", unit="check", disable=not progress, leave=False) as bar:
        for i, (t, fam) in enumerate(weak):
            results.append(weak_form_check(case.sample, case.drift, case.g2, t, fam, n=int(n), seed=seed + i, count=count, alpha=level,
                                           name=case.name))
            bar.update(1)
        for t in strong_grid:
            x = torch.as_tensor(case.sample(t, strong_points, torch.Generator().manual_seed(seed + 31337)), dtype=torch.float64)
            results.append(strong_form_check(case.density, case.drift, case.g2, t, x, tol=tol, name=case.name))
            bar.update(1)
    return results


def format_table(results: Sequence[CheckResult]) -> str:
    """A markdown table: case | check | t | statistic | threshold | detects | result (| note, when a W1 result is underpowered).

    ``detects`` is the smallest error W1 detects with 80% power, as a percentage of the
    weak form's terms (:attr:`~udm.theory.fokker_planck.CheckResult.detectable`); ``result``
    is pass, FAIL or underpowered, and the note says why and how many particles would do.
    """
    notes = any(r.warning for r in results)
    header = ("case", "check", "t", "statistic", "threshold", "detects", "result") + (("note",) if notes else ())

    def cells(r: CheckResult) -> tuple[str, ...]:
        case, check, t, stat, thr, verdict = r.row()
        detects = "-" if r.detectable is None else f"{100 * r.detectable:.2g}%"
        return (case, check, t, stat, thr, detects, verdict) + ((r.warning,) if notes else ())

    rows = [header, *(cells(r) for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(r) for r in rows[1:])])


def summarize(results: Sequence[CheckResult]) -> tuple[str, int]:
    """The closing line of ``udm check`` and its exit status: 0 all passed, 1 a check FAILED, else
    :data:`EXIT_UNDERPOWERED` when some check was underpowered (nothing is verified by it, nothing refuted).

    An underpowered check is never counted as a failure; the line says how many particles
    would give every check power (the largest :attr:`~udm.theory.fokker_planck.CheckResult.needed_n`).
    """
    verdicts = [r.verdict for r in results]
    passed, failed, weak = verdicts.count("pass"), verdicts.count("FAIL"), verdicts.count("underpowered")
    line = f"{passed} of {len(results)} checks passed"
    if failed:
        line += f"; {failed} FAILED"
    if weak:
        needed = max((r.needed_n or 0) for r in results)
        line += (f"; {weak} underpowered: too few particles for the test to tell a right field from a wrong one "
                 f"(neither a pass nor a failure); rerun with n (--n) of about {needed} or more")
    return line, 1 if failed else EXIT_UNDERPOWERED if weak else 0


__all__ = [
    "CHECK_CASES",
    "EXIT_UNDERPOWERED",
    "FIELD_PROTOCOL",
    "GAUSSIAN_RANGES",
    "MIXTURE",
    "POINTS",
    "WRONG_KINDS",
    "Case",
    "case_names",
    "check_times",
    "family_case",
    "format_table",
    "get_case",
    "green_case",
    "linear_point_case",
    "load_field",
    "no_diffusion",
    "resolve_case",
    "reverse_family",
    "run_checks",
    "summarize",
]
