"""Token infill (udm.conditioning on the mask and edit processes, THEORY §4.3-§4.4) against the exact conditional law.

Oracle: the enumerated toy law ``DATA`` of tests/test_discrete.py (V = 3, L = 4,
correlated, some sequences impossible). Position 2 is observed as token 1; the
exact p(x_0, x_1, x_3 | x_2 = 1) over the 27 hidden triples (23 of them
possible) comes from the enumeration. The denoisers are the exact ones of
:class:`udm.theory.discrete.EnumeratedSequences`: a joint draw x0 ~ p(x0 | x_t)
(``posterior_sampler``) or the exact per-position marginals as logits
(``posterior_marginals``, what a perfectly trained network returns).

Statistic: Pearson's chi-square of n = 16000 infills against the exact
conditional over the 23 possible triples, df = 22, accepted at p >= 1e-3
(chi-square < 48.27); a single infill in an impossible triple fails outright.
Power (``test_the_chi_square_test_has_power``): infills of which 15% ignore the
observation (TV 0.046) are rejected by the chi-square alone with probability
0.9996 (noncentrality 81), 10% conditioned on a wrong token (TV 0.046) with
probability > 0.9999; both laws put 10-14% of their mass on triples that are
impossible given x_2 = 1, so even 1% of such infills fails outright.

What the tests show (fixed seeds, n = 16000):

* mask process, exact: K1 (``udm_deterministic``) and K0 (``udm_baseline``)
  with the exact joint draw on the count, linear and cosine schedules with one
  or several positions per step (chi-square 13.3-27.9, p 0.18-0.93, TV
  0.010-0.012), and K1 with the exact marginals one position per step (count
  schedule, unit grid: chi-square 28.9, p = 0.15). This needs two things the
  core lacked: the start x_T is projected (otherwise the first step reveals
  tokens drawn before the denoiser saw y), and the denoiser is evaluated at
  ``MaskProcess.state_time`` (a projected state on the count schedule holds
  fewer than t masks, and at t = 1 on a continuous schedule only the all-mask
  state is possible: the exact posterior is undefined there and raises).
* not exact, rejected (p < 1e-40 or impossible infills): two positions per step
  from the marginals (their correlation is lost, as unconditionally; chi-square
  2743, TV 0.15), K0 with the marginals (257, TV 0.05), MaskGIT's confidence
  order ``mask_confidence`` (about 6500, TV 0.27; unconditionally its TV to
  this law is 0.54: the order depends on the drawn tokens), and the edit
  process (count 1835, linear 2185, TV 0.19 and 0.22, 6-9% of infills
  impossible, from a start drawn given the observation): its denoiser cannot
  be told that the observed tokens are clean, so it explains them as possibly
  replaced and x0_hat's hidden part follows a partly different observation.
  The edit infill is exact where observed and hidden tokens are independent,
  on a continuous schedule (the posterior factorises; chi-square 19.0,
  p = 0.70), like Gaussian replacement. docs/conditioning.md says so.
* observed tokens never change: checked after every step (callback) and at the end.
"""

from __future__ import annotations

import functools

import pytest
import scipy.stats
import torch
from test_discrete import DATA, L, V, make

import udm
from udm.conditioning import Replacement, inpaint
from udm.errors import ConfigError
from udm.processes.discrete import DiscreteProcess, sample_categorical
from udm.theory.discrete import EnumeratedSequences

N = 16000
OBSERVED = torch.tensor([False, False, True, False])
Y = torch.tensor([[0, 0, 1, 0]]).expand(N, L)  # the hidden entries of y are ignored
P_THRESHOLD = 1e-3


def hidden_law(law: EnumeratedSequences, y: torch.Tensor = Y[0]) -> tuple[torch.Tensor, torch.Tensor]:
    """(the hidden triples, their exact conditional probabilities given the observed tokens of y), over all V^3 triples."""
    triples = EnumeratedSequences(torch.ones(V**3), V, 3).sequences
    seqs = torch.zeros(len(triples), L, dtype=torch.int64)
    seqs[:, ~OBSERVED], seqs[:, OBSERVED] = triples, y[OBSERVED]
    joint = law.probs[law.index(seqs)]
    return triples, joint / joint.sum()


def chi_square(out: torch.Tensor, law: EnumeratedSequences = DATA) -> tuple[float, float, int, float]:
    """(Pearson chi-square over the possible triples, its p-value, infills in impossible triples, TV) of ``out``."""
    triples, p = hidden_law(law)
    hidden = out[:, ~OBSERVED]
    index = (hidden * V ** torch.arange(2, -1, -1)).sum(-1)
    counts = torch.bincount(index, minlength=len(triples)).to(torch.float64)
    possible = p > 0
    expected = len(out) * p[possible]
    stat = float(((counts[possible] - expected) ** 2 / expected).sum())
    tv = 0.5 * float((counts / len(out) - p).abs().sum())
    return stat, float(scipy.stats.chi2.sf(stat, int(possible.sum()) - 1)), int(counts[~possible].sum()), tv


def infill(
    p: DiscreteProcess,
    kind: str,
    sampler: str,
    steps: int,
    *,
    law: EnumeratedSequences = DATA,
    strict: bool = False,
    seed: int = 2,
) -> torch.Tensor:
    """Infills of Y's hidden positions, with the observed tokens checked after every step.

    ``kind``: the exact joint draw (``posterior``) or the exact per-position
    marginals (``marginals``) of ``law``; ``strict``: a state the data cannot
    produce raises (an exact sampler never reaches one).
    """
    steps_seen = []

    def check(state: dict) -> None:
        assert torch.equal(state["x"][:, OBSERVED], Y[:, OBSERVED]), f"step {state['i']} changed an observed token"
        steps_seen.append(state["i"])

    x_T = None
    if p.name == "edit":  # x_T holds x0 (x_T[i] != x0[i]): start from F_T(x0, eps) with x0 ~ law given the observed tokens
        g = torch.Generator().manual_seed(seed + 1)
        given = law.probs * (law.sequences[:, OBSERVED] == Y[0, OBSERVED]).all(1)
        x0 = law.sequences[sample_categorical(given.expand(N, -1), g)]
        x_T = p.corrupt(x0, p.t_max, p.sample_noise(x0.shape, g))
    if kind == "posterior":
        den = law.posterior_sampler(p, generator=seed - 1, strict=strict)
    else:
        den = law.posterior_marginals(p, strict=strict)
    out = inpaint(den, Y, OBSERVED, sampler, steps, x_T=x_T, process=p, generator=seed, callback=check)
    assert steps_seen == list(range(steps))
    assert torch.equal(out[:, OBSERVED], Y[:, OBSERVED]) and out.dtype == torch.int64
    assert int(out.min()) >= 0 and int(out.max()) < V, "a mask id or an out-of-range token survived"
    return out


EXACT = [
    ("count", 4, "udm_deterministic", "marginals"),  # one position per step: random-order autoregression
    ("count", 2, "udm_deterministic", "posterior"),
    ("linear", 4, "udm_deterministic", "posterior"),
    ("cosine", 2, "udm_deterministic", "posterior"),
    ("count", 4, "udm_baseline", "posterior"),
    ("linear", 4, "udm_baseline", "posterior"),
]


@pytest.mark.parametrize("schedule, steps, sampler, kind", EXACT)
def test_mask_infill_follows_the_exact_conditional(schedule: str, steps: int, sampler: str, kind: str) -> None:
    """Mask process: the infilled tokens pass the chi-square test against p(x_hidden | x_observed) (df = 22, p >= 1e-3)."""
    stat, p_value, impossible, tv = chi_square(infill(make("mask", schedule), kind, sampler, steps, strict=True))
    assert impossible == 0 and p_value >= P_THRESHOLD, (stat, p_value, impossible, tv)


INEXACT = [
    ("mask", "count", 2, "udm_deterministic", "marginals"),  # two positions at once from the marginals
    ("mask", "count", 4, "udm_baseline", "marginals"),  # K0 re-masks, then reveals several at once
    ("mask", "count", 4, "mask_confidence", "marginals"),  # MaskGIT: the order depends on the drawn tokens
    ("mask", "linear", 16, "mask_confidence", "marginals"),
    ("edit", "count", 4, "udm_deterministic", "posterior"),  # observed tokens read as possibly replaced
    ("edit", "linear", 4, "udm_deterministic", "posterior"),
]


@pytest.mark.parametrize("name, schedule, steps, sampler, kind", INEXACT)
def test_inexact_token_infill_is_detected(name: str, schedule: str, steps: int, sampler: str, kind: str) -> None:
    """Samplers and processes that are not exact: the same test rejects them (p < 1e-6); observed tokens still stay."""
    stat, p_value, impossible, tv = chi_square(infill(make(name, schedule), kind, sampler, steps))
    assert p_value < 1e-6 or impossible > 0, (stat, p_value, impossible, tv)


@functools.lru_cache(maxsize=None)
def independent_law() -> EnumeratedSequences:
    """DATA's law of (x_0, x_1, x_3) times an independent law (0.5, 0.3, 0.2) of x_2."""
    seqs = DATA.sequences
    rest = torch.zeros(V, V, V, dtype=torch.float64)
    rest.index_put_((seqs[:, 0], seqs[:, 1], seqs[:, 3]), DATA.probs, accumulate=True)
    x2 = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    return EnumeratedSequences(rest[seqs[:, 0], seqs[:, 1], seqs[:, 3]] * x2[seqs[:, 2]], V, L)


def test_edit_infill_is_exact_for_independent_blocks() -> None:
    """Edit process, hidden tokens independent of the observed one, linear schedule: p(x0 | x_t) factorises, infill is exact."""
    law = independent_law()
    stat, p_value, impossible, tv = chi_square(infill(make("edit", "linear"), "posterior", "udm_deterministic", 4, law=law), law)
    assert impossible == 0 and p_value >= P_THRESHOLD, (stat, p_value, impossible, tv)


def test_the_chi_square_test_has_power() -> None:
    """Infills that partly ignore the observation fail: by the chi-square alone, or by landing on impossible triples.

    Alternatives q = (1 - e) p + e r with r the unconditional law of the hidden
    triple or its law given the wrong token x_2 = 0: noncentral chi-square (df = 22)
    power at e = 0.15 and 0.1 (TV 0.046 each); and r puts 14% (10%) of its mass on
    triples impossible given x_2 = 1, so e = 0.01 leaves one there with probability > 0.99.
    """
    _, p = hidden_law(DATA)
    triples = EnumeratedSequences(torch.ones(V**3), V, 3).sequences
    free = torch.zeros(len(triples), dtype=torch.float64)
    free.index_put_(((DATA.sequences[:, [0, 1, 3]] * V ** torch.arange(2, -1, -1)).sum(-1),), DATA.probs, accumulate=True)
    wrong = hidden_law(DATA, torch.tensor([0, 0, 0, 0]))[1]
    possible = p > 0
    df = int(possible.sum()) - 1
    critical = scipy.stats.chi2.isf(P_THRESHOLD, df)
    assert df == 22 and abs(critical - 48.27) < 0.01
    for r, e in ((free, 0.15), (wrong, 0.1)):
        q = (1 - e) * p + e * r
        noncentrality = N * float(((q[possible] - p[possible]) ** 2 / p[possible]).sum())
        assert scipy.stats.ncx2.sf(critical, df, noncentrality) > 0.999, (e, noncentrality)
        assert 1 - (1 - 0.01 * float(r[~possible].sum())) ** N > 0.99


# --- the pieces: the projected start, the state's own time ------------------------------------


def test_the_first_denoiser_call_sees_the_observed_tokens() -> None:
    """The start x_T is projected: the first evaluation already shows y (else its reveals ignore the observation)."""
    p = make("mask", "count")
    seen = []

    def spy(x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        seen.append((x.clone(), t))
        return DATA.posterior_marginals(p)(x, t)

    inpaint(spy, Y[:8], OBSERVED, "udm_deterministic", L, process=p, generator=0)
    first, t = seen[0]
    assert torch.equal(first[:, OBSERVED], Y[:8, OBSERVED]) and bool((first[:, ~OBSERVED] == p.mask_id).all())
    assert torch.equal(torch.as_tensor(t), torch.full((8,), 3.0, dtype=torch.float64))  # three masks: time 3, not 4


def test_state_time_is_the_time_the_state_shows() -> None:
    """Count: the number of masks where it is not t; continuous: t unless m(t) = 1 rules the state out; else t itself."""
    count, linear, cosine = make("mask", "count"), make("mask", "linear"), make("mask", "cosine")
    m = count.mask_id
    x = torch.tensor([[m, m, 1, m], [m, 0, 1, m]])
    torch.testing.assert_close(count.state_time(x, 4.0), torch.tensor([3.0, 2.0], dtype=torch.float64))
    assert count.state_time(x[1:], 2.0) == 2.0 and count.state_time(torch.full((2, L), m), 4.0) == 4.0
    with pytest.raises(ValueError, match="cannot be produced by any sequence"):
        DATA.posterior(count, x, 4.0)  # the grid time: no posterior
    DATA.posterior(count, x, count.state_time(x, 4.0))
    torch.testing.assert_close(linear.state_time(x, 1.0), torch.tensor([0.75, 0.5], dtype=torch.float64))
    assert linear.state_time(x, 0.5) == 0.5 and cosine.state_time(torch.full((2, L), m), 1.0) == 1.0
    levels = torch.linspace(0, 1, 11, dtype=torch.float64)
    for p in (count, linear, cosine):
        torch.testing.assert_close(p.rate(p.rate_inverse(levels)), levels, rtol=0, atol=1e-12)


def test_unconditional_runs_see_the_grid_times() -> None:
    """Without a projection every state has the grid's number of masks: the denoiser gets the grid times, unchanged."""
    for schedule, steps in (("count", L), ("linear", 5)):
        p = make("mask", schedule)
        times = []

        def spy(x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
            times.append(t)
            return DATA.posterior_marginals(p)(x, t)

        udm.sample(spy, "udm_deterministic", steps, shape=(16, L), process=p, generator=0)
        grid = udm.get_grid("uniform", p, steps)[:-1].tolist()
        assert times == grid and all(isinstance(t, float) for t in times)


def test_an_encoding_process_is_refused() -> None:
    """The encoder model (THEORY §4.5) diffuses a latent of another shape: observed tokens are not coordinates of it."""
    p = udm.get_process("encoder", vocab_size=V, latent_dim=4)
    with pytest.raises(ConfigError, match="not coordinates of its states") as caught:
        Replacement(p, Y[:2], OBSERVED)
    assert "\n" not in str(caught.value)
