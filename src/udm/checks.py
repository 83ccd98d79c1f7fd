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
:func:`load_field` loads a user's field from ``module:attr``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch

from . import rng
from .processes import get_process, pfgmpp as pfgmpp_process
from .processes.gaussian import GaussianProcess, LinearProcess
from .registry import Registry
from .theory.fokker_planck import FAMILIES, CheckResult, Density, Diffusion, Drift, Sampler, strong_form_check, weak_form_check
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


def load_field(spec: str) -> Case:
    """A user field from ``"module:attr"``: an object (or a zero-argument factory of one) to check.

    Required: ``sample(t, n, generator)`` and ``drift(t, x)`` (or ``velocity(t, x)``). Optional:
    ``g2`` (g_t^2, a number or a function of t; default 0, an ODE), ``density(t, x)`` (enables W2),
    ``t_range`` (default (0.1, 0.9)), ``dim`` (default: from a sample), ``name``, ``description``, ``families``.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"a field spec must look like 'module:attr' (e.g. 'my_fields:heat'), got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"cannot import module {module_name!r} of field spec {spec!r}: {err}") from None
    if not hasattr(module, attr):
        raise ValueError(f"module {module_name!r} has no attribute {attr!r} (field spec {spec!r})")
    obj = getattr(module, attr)
    if isinstance(obj, type) or (callable(obj) and _attribute(obj, "sample") is None):
        obj = obj()
    if isinstance(obj, Case):
        return obj
    sample, drift = _attribute(obj, "sample"), _attribute(obj, "drift", "velocity")
    missing = [what for what, got in (("sample(t, n, generator)", sample), ("drift(t, x) or velocity(t, x)", drift)) if not callable(got)]
    if missing:
        raise ValueError(f"field {spec!r} ({type(obj).__name__}) is missing {' and '.join(missing)}; "
                         "optional: g2, density(t, x), t_range, dim")
    g2 = _attribute(obj, "g2")
    g2 = no_diffusion if g2 is None else g2
    if not (callable(g2) or isinstance(g2, (int, float))):
        raise ValueError(f"field {spec!r}: g2 must be a number or a function of t, got {type(g2).__name__}")
    density = _attribute(obj, "density")
    t_range = tuple(float(v) for v in (_attribute(obj, "t_range") or (0.1, 0.9)))
    if len(t_range) != 2 or not t_range[0] <= t_range[1]:
        raise ValueError(f"field {spec!r}: t_range must be (t_lo, t_hi) with t_lo <= t_hi, got {t_range}")
    dim = _attribute(obj, "dim")
    if dim is None:
        dim = int(torch.as_tensor(sample(t_range[0], 2, 0)).shape[1])
    families = tuple(_attribute(obj, "families") or FAMILIES)
    return Case(str(_attribute(obj, "name") or spec), int(dim), sample, drift, g2, density if callable(density) else None,
                t_range, str(_attribute(obj, "description") or ""), families)


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
) -> list[CheckResult]:
    """W1 for every test-function family and time, then W2 at the same times when the case has a density.

    ``alpha`` is the familywise level of the case's W1 checks: each of the m = families x times
    checks runs at alpha / m (Bonferroni), so a correct case fails anywhere with probability <= alpha.
    """
    fams = tuple(families or case.families)
    grid = check_times(case, times)
    level = alpha / (len(fams) * len(grid))
    results = [
        weak_form_check(case.sample, case.drift, case.g2, t, fam, n=n, seed=seed + i, count=count, alpha=level, name=case.name)
        for i, (t, fam) in enumerate((t, fam) for t in grid for fam in fams)
    ]
    if strong and case.density is not None:
        for t in grid:
            x = torch.as_tensor(case.sample(t, strong_points, torch.Generator().manual_seed(seed + 31337)), dtype=torch.float64)
            results.append(strong_form_check(case.density, case.drift, case.g2, t, x, tol=tol, name=case.name))
    return results


def format_table(results: Sequence[CheckResult]) -> str:
    """A markdown table: case | check | t | statistic | threshold | result (| note, when a W1 result has a warning)."""
    notes = any(r.warning for r in results)
    header = ("case", "check", "t", "statistic", "threshold", "result") + (("note",) if notes else ())
    rows = [header, *(r.row() + ((r.warning,) if notes else ()) for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(r) for r in rows[1:])])


__all__ = [
    "CHECK_CASES",
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
]
