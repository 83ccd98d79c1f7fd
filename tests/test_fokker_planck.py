"""Weak-form (W1), strong-form (W2) and integration-by-parts (W3) checkers of THEORY §9.2 on the cases of §9.3.

* every built-in case passes W1 for every test-function family at several times, and W2
  where it has a density (~1e-15 relative in float64);
* Part 9's reverse-SDE family keeps p_t for every diffusion s (§9.3), on VP and VE;
* every wrong drift (sign flip, g^2 instead of 1/2 g^2, missing term, missing diffusion)
  fails W1 by far (statistic > 5 x threshold) and W2 (relative residual > 1e-2);
* W3: int v . grad p = -int p div v by quadrature in 1-D and 2-D (< 1e-6), and it notices
  a boundary term; the closed-form test-function derivatives equal autograd;
* load_field on a user module, with one ConfigError line for every way a field can break the protocol;
* a too-small n is reported as underpowered (neither pass nor failure), with the n it needs.

Statistical thresholds: W1 compares max_k |z_k| with a Bonferroni normal quantile. This
file runs ~150 positive W1 checks in ~25 groups (a case, or a reverse-family member), so a
per-check level of 1% would give about one false failure per run (seen: a z of 3.74 at a
per-case level of 1%, with no drift as n grows, i.e. chance). The level is therefore
familywise over the whole file: ALPHA = 1% split over the groups, and within a group over
its checks (run_checks does that split), so P(any false failure) <= 1%. The seeds are fixed,
so the outcome is deterministic. A wrong drift shifts every z_k by a bias that grows like
sqrt(n) (here z ~ 40-400), so "> 5 x threshold" is a wide margin for the negatives, not a
tuned one.
"""

from __future__ import annotations

import math
import sys

import pytest
import torch

from udm import checks
from udm.theory import GaussianMixture
from udm.theory import fokker_planck as fp

N = 20000  # particles per W1 check: the SE is ~1% of the per-particle spread
REVERSE = [(process, s) for process in ("vp", "ve") for s in (0.0, 0.3, 1.0, 1.7, 3.0)]
ALPHA = 0.01 / (len(checks.case_names()) + len(REVERSE) + 4)  # familywise over positive groups (+4: user fields, simulation, vp)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _mid(case: checks.Case) -> float:
    return checks.check_times(case, 1)[0]


# --- the checks pass on every exact case ----------------------------------------------------------------
@pytest.mark.parametrize("name", checks.case_names())
def test_every_case_passes_w1_and_w2(name):
    case = checks.get_case(name)
    results = checks.run_checks(case, n=N, times=2, seed=1, alpha=ALPHA)
    assert any(r.check.startswith("W1") for r in results)
    for r in results:
        assert r.passed, str(r)
        assert r.warning == "", f"{r}: {r.warning}"
        if r.check == "W2":
            assert r.statistic < 1e-8, str(r)


@pytest.mark.parametrize("process, s", REVERSE)
def test_reverse_family_preserves_marginals_for_every_s(process, s):
    """§9.3: drift f x - 1/2 (g^2 - s^2) score with diffusion s keeps the same p_t for every s."""
    case = checks.reverse_family(s, process)
    t = _mid(case)
    for fam in case.families:
        r = fp.weak_form_check(case.sample, case.drift, case.g2, t, fam, n=N, seed=3, alpha=ALPHA / len(case.families))
        assert r.passed, str(r)
    x = case.sample(t, 64, 9)
    assert checks.strong_form_check(case.density, case.drift, case.g2, t, x).statistic < 1e-8


# --- and fail on every wrong one --------------------------------------------------------------------------
WRONG = [name for name in checks.case_names(wrong=True) if ":" in name]


def test_every_case_has_the_negative_controls():
    kinds = {name.partition(":")[2] for name in WRONG}
    assert kinds == set(checks.WRONG_KINDS)
    for base in ("vp_ode", "ve_ode", "edm", "rectified_flow", "gravity", "pfgmpp", "cdf"):
        assert {f"{base}:sign_flip", f"{base}:wrong_factor", f"{base}:missing_term"} <= set(WRONG)
    assert {"vp:sign_flip", "vp:no_diffusion", "ve:no_diffusion"} <= set(WRONG)


@pytest.mark.parametrize("name", WRONG)
def test_wrong_drift_fails_w1_and_w2(name):
    case = checks.get_case(name)
    t = _mid(case)
    results = [fp.weak_form_check(case.sample, case.drift, case.g2, t, fam, n=N, seed=2) for fam in case.families]
    best = max(results, key=lambda r: r.statistic / r.threshold)
    assert best.statistic > 5 * best.threshold, str(best)
    assert not best.passed
    x = case.sample(t, 64, 4)
    w2 = checks.strong_form_check(case.density, case.drift, case.g2, t, x)
    assert not w2.passed and w2.statistic > 1e-2, str(w2)


def test_w1_without_common_random_numbers_is_valid_but_weak():
    """Independent samples at t +- h: still unbiased, but the SE grows like 1/h (why W1 pairs the particles)."""
    case = checks.get_case("vp_ode")
    t = _mid(case)
    paired = fp.weak_form_check(case.sample, case.drift, case.g2, t, "bumps", n=N, seed=5)
    loose = fp.weak_form_check(case.sample, case.drift, case.g2, t, "bumps", n=N, seed=5, h=1e-3, common_random_numbers=False)
    assert paired.passed and loose.passed
    assert float(loose.stderr.min()) > 30 * float(paired.stderr.max())


def test_w1_estimates_the_truncation_error():
    """A needlessly large h is caught by the Richardson term: the SE grows instead of the statistic."""
    case = checks.get_case("ve")
    t = _mid(case)
    small = fp.weak_form_check(case.sample, case.drift, case.g2, t, "bumps", n=N, seed=6)
    large = fp.weak_form_check(case.sample, case.drift, case.g2, t, "bumps", n=N, seed=6, h=0.05)
    assert small.passed and large.passed
    assert float((large.stderr / small.stderr).max()) > 2.0


def test_bonferroni_threshold():
    assert fp.bonferroni_threshold(1, 0.05) == pytest.approx(1.959964, abs=1e-6)
    assert fp.bonferroni_threshold(16, 0.01) == pytest.approx(3.4205, abs=1e-3)
    with pytest.raises(ValueError, match="alpha"):
        fp.bonferroni_threshold(4, 1.5)


# --- W2 ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["vp", "vp_ode", "ve", "ve_ode", "gravity"])
def test_w2_residual_is_roundoff_and_wrong_drifts_are_order_one(name):
    case = checks.get_case(name)
    for t in checks.check_times(case, 3):
        x = case.sample(t, 128, 11)
        res = fp.strong_form_residual(case.density, case.drift, case.g2, t, x)
        assert float(res.relative.max()) < 1e-8
    t = _mid(case)
    x = case.sample(t, 128, 12)
    for kind in case.wrong_kinds:
        wrong = case.wrong(kind)
        rel = fp.strong_form_residual(wrong.density, wrong.drift, wrong.g2, t, x).relative
        assert float(rel.median()) > 1e-2, kind


def test_w2_sides_of_the_equation():
    """lhs = d_t p and rhs = -div(p f) + 1/2 g^2 Lap p agree for the VP SDE, and d_t p matches a finite difference."""
    case = checks.get_case("vp")
    t, x = 0.3, checks.get_case("vp").sample(0.3, 16, 0)
    r = fp.strong_form_check(case.density, case.drift, case.g2, t, x)
    torch.testing.assert_close(r.lhs, r.rhs, rtol=1e-9, atol=1e-12)
    h = 1e-5
    t_plus, t_minus = (torch.full((16,), t + sign * h, dtype=torch.float64) for sign in (1, -1))
    fd = (case.density(t_plus, x) - case.density(t_minus, x)) / (2 * h)
    torch.testing.assert_close(r.lhs, fd, rtol=1e-6, atol=1e-9)


# --- W3 and the operators --------------------------------------------------------------------------------
def _smooth_density(dim: int):
    gmm = GaussianMixture([0.6, 0.4], [[-0.7] * dim, [0.9] + [0.2] * (dim - 1)], [[0.5] * dim, [0.3] * dim])
    return lambda x: torch.exp(gmm.log_prob(x))


def _smooth_field(x: torch.Tensor) -> torch.Tensor:
    shifted = torch.roll(x, 1, dims=1)
    return torch.sin(1.3 * x) * (1.0 + shifted**2) + x**3 - 0.5 * shifted


@pytest.mark.parametrize("dim", [1, 2])
def test_w3_integration_by_parts(dim):
    r = fp.integration_by_parts_check(_smooth_density(dim), _smooth_field, dim)
    assert r.passed and r.statistic < 1e-6, str(r)
    assert abs(float(r.lhs)) > 1e-2  # a non-trivial identity, not 0 = 0


def test_w3_sees_a_boundary_term():
    """A density cut off by the box gives int v . grad p != -int p div v: the check can fail."""
    r = fp.integration_by_parts_check(lambda x: torch.exp(-((x[:, 0] - 5.5) ** 2)), _smooth_field, 1)
    assert not r.passed and r.statistic > 1e-3


@pytest.mark.parametrize("kind", fp.FAMILIES)
def test_closed_form_derivatives_equal_autograd(kind):
    phis = fp.test_functions(kind, 3, 7, 0, center=torch.tensor([0.2, -0.1, 0.4]), scale=torch.tensor([0.8, 1.1, 0.6]), degree=3)
    generic = fp.TestFunctions(phis.dim, phis.count, phis)
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(phis.grad(x), generic.grad(x), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(phis.laplacian(x), generic.laplacian(x), rtol=1e-10, atol=1e-12)


def test_test_functions_are_fitted_to_the_sample():
    x = 5.0 + 3.0 * torch.randn(4000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    bumps = fp.fit_test_functions("bumps", x, 16, 0)
    assert float((bumps.centers - 5.0).abs().max()) < 3 * 3.0  # centres where the sample is
    assert 0.5 < float(bumps.widths.mean()) < 3.0
    poly = fp.fit_test_functions("polynomial", x, 16, 0, degree=3)
    assert poly.count == 9 and torch.allclose(poly.scale, torch.full((2,), 3.0, dtype=torch.float64), rtol=0.1)
    with pytest.raises(ValueError, match="family"):
        fp.test_functions("wavelets", 2)


def test_operators_on_closed_forms():
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(fp.gradient(lambda y: (y**2).sum(1), x), 2 * x)
    torch.testing.assert_close(fp.divergence(lambda y: y * y[:, :1], x), 3 * x[:, 0])
    torch.testing.assert_close(fp.laplacian(lambda y: (y**3).sum(1), x), 6 * x.sum(1))


# --- registry, user fields, table ---------------------------------------------------------------------
def test_registry_and_errors():
    assert {"vp", "vp_ode", "ve", "ve_ode", "edm", "reverse_family", "rectified_flow", "gravity", "pfgmpp", "cdf"} <= set(checks.case_names())
    with pytest.raises(ValueError, match="valid check cases"):
        checks.get_case("heat_death")
    with pytest.raises(ValueError, match="no wrong variant"):
        checks.get_case("ve:sign_flip")  # the VE SDE has no drift to flip
    assert checks.resolve_case("vp_ode:sign_flip").name == "vp_ode:sign_flip"


USER_FIELD = '''
import torch

class Heat:
    """The 1-D heat equation from N(0, 1): p_t = N(0, 1 + t), dx = sqrt(g2) dw with g2 = 1."""
    t_range = (0.5, 1.5)
    g2 = 1.0

    def sample(self, t, n, generator):
        gen = generator if isinstance(generator, torch.Generator) else torch.Generator().manual_seed(int(generator))
        return (1.0 + t) ** 0.5 * torch.randn(n, 1, generator=gen, dtype=torch.float64)

    def drift(self, t, x):
        return torch.zeros_like(x)

    def density(self, t, x):
        v = 1.0 + t
        return torch.exp(-0.5 * x[:, 0] ** 2 / v) / torch.sqrt(2 * torch.pi * v)

heat = Heat
wrong = Heat()
wrong.g2 = 0.0

class NoDrift:
    def sample(self, t, n, generator):
        return torch.zeros(n, 1)

no_drift = NoDrift()
'''


def test_load_field_from_a_user_module(tmp_path, monkeypatch):
    (tmp_path / "user_fields_fp.py").write_text(USER_FIELD)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "user_fields_fp", raising=False)
    case = checks.load_field("user_fields_fp:heat")
    assert case.dim == 1 and case.t_range == (0.5, 1.5) and case.density is not None
    results = checks.run_checks(case, n=N, times=2, alpha=ALPHA)
    assert all(r.passed for r in results), checks.format_table(results)
    bad = checks.load_field("user_fields_fp:wrong")
    assert not any(r.passed for r in checks.run_checks(bad, n=N, times=1, families=["bumps"]))
    with pytest.raises(ValueError, match=r"drift\(t, x\) or velocity\(t, x\)"):
        checks.load_field("user_fields_fp:no_drift")
    with pytest.raises(ValueError, match="no attribute 'nothing'"):
        checks.load_field("user_fields_fp:nothing")
    with pytest.raises(ValueError, match="cannot import module"):
        checks.load_field("no_such_module_fp:heat")
    with pytest.raises(ValueError, match="module:attr"):
        checks.load_field("user_fields_fp")


def test_format_table():
    case = checks.get_case("vp_ode")
    results = checks.run_checks(case, n=2000, times=1, families=["bumps"]) + checks.run_checks(case.wrong("sign_flip"), n=2000, times=1,
                                                                                                families=["bumps"], strong=False)
    table = checks.format_table(results)
    lines = table.splitlines()
    assert lines[0].split("|")[1].strip() == "case" and len(lines) == 2 + len(results)
    assert "W1/bumps" in table and "W2" in table and "FAIL" in table and "pass" in table
    assert all(len(line) == len(lines[0]) for line in lines)
    assert "W1/bumps" in str(results[0]) and math.isfinite(results[0].statistic)
    assert "note" not in lines[0]
    sparse = fp.weak_form_check(lambda t, n, g: torch.randn(n, 1, generator=g, dtype=torch.float64) ** 9 * (1 + t), lambda t, x: x / (1 + t),
                                0.0, 0.5, "polynomial", n=2000)
    assert sparse.warning and "note" in checks.format_table([sparse]).splitlines()[0]


def test_w1_on_simulated_particles_checks_the_pf_ode_against_its_sde():
    """W1 with p_t sampled by Euler-Maruyama from p_t0 (§9.2 step 1): particles of the VP SDE satisfy the weak form
    of the probability-flow ODE (g = 0), which transports the same marginals; the sign-flipped ODE fails."""
    sde, ode, wrong = checks.get_case("vp"), checks.get_case("vp_ode"), checks.get_case("vp_ode:sign_flip")
    t0 = 0.05
    sampler = fp.simulated_sampler(lambda n, g: sde.sample(t0, n, g), sde.drift, sde.g2, t0, steps=150)
    right = fp.weak_form_check(sampler, ode.drift, 0.0, 0.4, "bumps", n=8000, seed=1, alpha=ALPHA)
    assert right.passed, str(right)
    bad = fp.weak_form_check(sampler, wrong.drift, 0.0, 0.4, "bumps", n=8000, seed=1)
    assert bad.statistic > 5 * bad.threshold, str(bad)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        fp.simulated_sampler(lambda n, g: sde.sample(t0, n, g), sde.drift, sde.g2, t0, steps=0)


# --- user fields that break the protocol: one ConfigError line each, never a traceback -------------------
PROTOCOL_FIELDS = '''
import torch

class Heat:
    """The heat equation from N(0, 1) (p_t = N(0, 1 + t), g2 = 1), drawing with the generator it is given."""
    t_range = (0.5, 1.5)
    g2 = 1.0

    def sample(self, t, n, generator):
        return (1.0 + t) ** 0.5 * torch.randn(n, 1, generator=generator, dtype=torch.float64)

    def drift(self, t, x):
        return torch.zeros_like(x)

uses_generator = Heat

class Flat(Heat):
    def sample(self, t, n, generator):
        return super().sample(t, n, generator)[:, 0]

class Text(Heat):
    def sample(self, t, n, generator):
        return "particles"

class Ints(Heat):
    def sample(self, t, n, generator):
        return torch.zeros(n, 1, dtype=torch.int64)

class ExtraRow(Heat):
    def sample(self, t, n, generator):
        return super().sample(t, n + 1, generator)

class WideDrift(Heat):
    def drift(self, t, x):
        return torch.zeros(x.shape[0], 2, dtype=x.dtype)

class RaisingDrift(Heat):
    def drift(self, t, x):
        raise TypeError("unsupported operand")

class LateFailure(Heat):
    def sample(self, t, n, generator):
        if 0.6 < t < 1.4:
            raise RuntimeError("no samples in the middle")
        return super().sample(t, n, generator)

class NegativeG2(Heat):
    g2 = -1.0

def needs_arguments(scale):
    return Heat()
'''


@pytest.fixture
def protocol_fields(tmp_path, monkeypatch):
    (tmp_path / "fp_protocol.py").write_text(PROTOCOL_FIELDS)
    (tmp_path / "fp_raises_on_import.py").write_text("raise RuntimeError('configuration missing')\n")
    (tmp_path / "fp_syntax_error.py").write_text("def drift(t, x:\n    return x\n")
    (tmp_path / "fp_bad_import.py").write_text("import no_such_dependency_fp\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("fp_protocol", "fp_raises_on_import", "fp_syntax_error", "fp_bad_import"):
        monkeypatch.delitem(sys.modules, name, raising=False)


def test_load_field_passes_a_torch_generator(protocol_fields):
    """load_field infers the dimension by calling sample with a real torch.Generator, as the checks do."""
    case = checks.load_field("fp_protocol:uses_generator")
    assert case.dim == 1 and case.t_range == (0.5, 1.5)
    results = checks.run_checks(case, n=4000, times=1, families=["polynomial"], alpha=ALPHA)
    assert all(r.verdict == "pass" for r in results), checks.format_table(results)


@pytest.mark.parametrize("spec, message", [
    ("fp_protocol:Flat", r"'fp_protocol:Flat': sample\(t, n, generator\) returned a float64 tensor of shape \(4,\), "
                         r"expected a float tensor of shape \(4, d\); "),
    ("fp_protocol:Text", r"sample\(t, n, generator\) returned a str, expected a float tensor"),
    ("fp_protocol:Ints", r"sample\(t, n, generator\) returned a int64 tensor of shape \(4, 1\)"),
    ("fp_protocol:ExtraRow", r"returned a float64 tensor of shape \(5, 1\), expected a float tensor of shape \(4, d\)"),
    ("fp_protocol:WideDrift", r"'fp_protocol:WideDrift': drift\(t, x\) returned a float64 tensor of shape \(4, 2\), "
                              r"expected a float tensor of shape \(4, 1\)"),
    ("fp_protocol:RaisingDrift", r"drift\(t, x\) raised TypeError: unsupported operand; fix the field"),
    ("fp_protocol:NegativeG2", r"g2 must be a number >= 0"),
    ("fp_protocol:needs_arguments", r"calling it to build the field raised TypeError"),
    ("fp_protocol:nothing", r"module 'fp_protocol' has no attribute 'nothing' \(field spec 'fp_protocol:nothing'\); name an object"),
    ("fp_raises_on_import:field", r"cannot import module 'fp_raises_on_import' of field 'fp_raises_on_import:field': "
                                  r"RuntimeError: configuration missing; fix the module"),
    ("fp_syntax_error:field", r"cannot import module 'fp_syntax_error' .*SyntaxError"),
    ("fp_bad_import:field", r"ModuleNotFoundError: No module named 'no_such_dependency_fp'; install what it imports"),
    ("fp_no_such_module:field", r"cannot import module 'fp_no_such_module' of field 'fp_no_such_module:field': no such module; run"),
    ("fp_protocol", r"must look like 'module:attr'"),
])
def test_a_field_that_breaks_the_protocol_is_one_config_error(protocol_fields, spec, message):
    from udm.errors import ConfigError

    with pytest.raises(ConfigError, match=message) as info:
        checks.load_field(spec)
    assert "\n" not in str(info.value) and info.value.__cause__ is None


def test_user_code_failing_during_the_checks_is_one_config_error(protocol_fields):
    """Every call is guarded, not only the probe at the ends of t_range: a failure mid-range names the field too."""
    from udm.errors import ConfigError

    case = checks.load_field("fp_protocol:LateFailure")
    with pytest.raises(ConfigError, match=r"'fp_protocol:LateFailure': sample\(t, n, generator\) raised RuntimeError: no samples"):
        checks.run_checks(case, n=1000, times=3, families=["polynomial"])


# --- power: a small n is reported as underpowered, never as a plain failure ---------------------------------
def test_a_correct_case_at_tiny_n_is_underpowered_not_failed():
    """`udm check vp --n 50`: the z-scores rest on a few particles (one bumps check scores z > threshold by chance),
    so every W1 result is 'underpowered', the summary says so, asks for more particles and exits 3, not 1."""
    case = checks.get_case("vp")
    results = checks.run_checks(case, n=50, times=3)
    weak = [r for r in results if r.check.startswith("W1")]
    assert any(not r.passed for r in weak)  # the raw comparison fails somewhere ...
    assert all(r.verdict == "underpowered" and r.warning for r in weak)  # ... but the verdict is inconclusive
    assert all(r.verdict == "pass" for r in results if r.check == "W2")
    table = checks.format_table(results)
    assert "underpowered" in table and "FAIL" not in table and "raise n to ~" in table
    line, code = checks.summarize(results)
    assert code == checks.EXIT_UNDERPOWERED == 3 and "FAILED" not in line and "9 underpowered" in line and "--n" in line
    needed = max(r.needed_n for r in weak)
    assert 1000 <= needed <= 20000
    powered = checks.run_checks(case, n=needed, times=3, seed=2, alpha=ALPHA)
    assert all(r.verdict == "pass" for r in powered), checks.format_table(powered)
    assert checks.summarize(powered) == ("12 of 12 checks passed", 0)


def test_a_wrong_field_with_power_fails_and_n_below_the_minimum_is_refused():
    from udm.errors import ConfigError

    wrong = checks.run_checks(checks.get_case("vp_ode:sign_flip"), n=4000, times=1, strong=False)
    assert all(r.verdict == "FAIL" for r in wrong)
    assert checks.summarize(wrong)[1] == 1
    with pytest.raises(ConfigError, match=r"n = 20 particles is below the 30 a weak-form z-score needs; use the default"):
        checks.run_checks(checks.get_case("vp"), n=20)


def test_detectable_error_shrinks_like_one_over_root_n():
    """CheckResult.detectable = min_k (z + z_0.8) SE_k / scale_k: four times the particles, half the detectable error."""
    case = checks.get_case("vp_ode")
    small, large = (fp.weak_form_check(case.sample, case.drift, case.g2, 0.3, "fourier", n=n, seed=4) for n in (4000, 16000))
    assert 1.6 < small.detectable / large.detectable < 2.5, (small.detectable, large.detectable)
    assert large.detectable < fp.MAX_DETECTABLE and not large.underpowered
