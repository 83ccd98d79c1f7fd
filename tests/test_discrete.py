"""The discrete processes (THEORY §4.3 edit, §4.4 mask) on a toy with V = 3, L = 4 (81 sequences).

* kernel marginal test (§3.3): with the TRUE x0, K1 and K0 send p(x_t | x0) to
  p(x_s | x0), by exact TV over all enumerated states against the
  Monte-Carlo floor; the law itself is exp(log_kernel), which normalizes;
* edit invertibility: C and the offsets are recovered exactly and
  F_t(x0, F_t^{-1}(x0, x_t)) = x_t; the count schedule changes exactly t positions;
* oracle-posterior test (§3.1 consequence 2, §4.7 item 4): with x0_hat drawn
  from the exact posterior, the 'udm' loop (K1 and K0) reproduces the data for
  one or k positions per step and for the continuous schedules, with TV at
  the Monte-Carlo floor and falling as n grows; with exact per-position
  MARGINALS only the one-per-step mask sampler is exact (random-order AR);
* the same for the one-per-step chain without Monte Carlo, by propagating the
  exact law over all states; from the uniform prior of §4.3 the edit sampler
  is off by an exactly computed TV of about 0.015 (x_T's law is not uniform);
* the mask ELBO weight makes the bound an equality with exact conditionals;
* MaskGIT confidence order returns no mask ids; bad inputs raise clear errors.

Monte-Carlo floors: mean + 4 s.d. of the TV of i.i.d. samples of the same
size from the exact law (:meth:`udm.theory.discrete.EnumeratedSequences.null_tvs`);
the mean agrees with the exact de Moivre value ``expected_tv``. All seeds are fixed.
"""

from __future__ import annotations

import itertools
import json
import math

import pytest
import scipy.integrate
import torch

import udm
from udm.kernels import KERNELS
from udm.nets.transformer import SequenceTransformer
from udm.processes.discrete import DiscreteProcess
from udm.processes.edit import EditProcess
from udm.processes.mask import MaskProcess
from udm.samplers.discrete import mask_confidence
from udm.theory.discrete import EnumeratedSequences

V, L = 3, 4
X0 = torch.tensor([[0, 2, 1, 1]])
COUNT_STEPS = [(4, 3), (4, 1), (3, 2), (2, 0)]
CONT_STEPS = [(1.0, 0.6), (0.7, 0.3), (0.4, 0.0)]
PROCESSES = {"mask": MaskProcess, "edit": EditProcess}


def data() -> EnumeratedSequences:
    """A hand-made, correlated, non-uniform law over {0,1,2}^4 with some impossible sequences."""
    w = []
    for x in itertools.product(range(V), repeat=L):
        a, b, c, d = x
        weight = (1 + 4 * (b == a)) * (1 + 2 * (c == (b + 1) % V)) * (1 + 3 * (d == a)) * (1 + a)
        if (a == 2 and d == 0) or x == (1, 1, 1, 1):
            weight = 0
        w.append(float(weight))
    return EnumeratedSequences(torch.tensor(w), V, L)


DATA = data()


def bound(law: EnumeratedSequences, n: int) -> float:
    """The Monte-Carlo floor: mean + 4 s.d. of the TV of an i.i.d. n-sample of ``law`` (100 fixed-seed draws)."""
    null = law.null_tvs(n, draws=100, generator=torch.Generator().manual_seed(n))
    return float(null.mean() + 4 * null.std())


DATA_BOUND = {n: bound(DATA, n) for n in (2000, 32000)}


def test_null_tv_matches_de_moivre() -> None:
    """The simulated floor's mean agrees with the exact E TV of an i.i.d. sample."""
    for n in (50, 2000):
        null = DATA.null_tvs(n, draws=400, generator=torch.Generator().manual_seed(1))
        assert abs(float(null.mean()) - DATA.expected_tv(n)) < 4 * float(null.std()) / 20, (n, float(null.mean()))


def make(name: str, schedule: str = "count", **kw) -> DiscreteProcess:
    return PROCESSES[name](V, L, schedule=schedule, **kw)


def all_states(p: DiscreteProcess) -> EnumeratedSequences:
    """Every state x_t of the process (ids < input_vocab_size), uniformly weighted: an enumerator."""
    return EnumeratedSequences(torch.ones(p.input_vocab_size**L), p.input_vocab_size, L)


def state_law(p: DiscreteProcess, x0: torch.Tensor, t: float) -> EnumeratedSequences:
    """The exact law of x_t given x0 over every state, from log_kernel."""
    states = all_states(p).sequences
    law = torch.exp(p.log_kernel(states, x0.expand(len(states), L), t))
    return EnumeratedSequences(law, p.input_vocab_size, L)


def exact_start(p: DiscreteProcess, n: int, seed: int) -> torch.Tensor:
    """x_T drawn from its exact marginal: x0 ~ data, x_T = F_T(x0, eps)."""
    g = torch.Generator().manual_seed(seed)
    x0 = DATA.sample(n, g)
    return p.corrupt(x0, p.t_max, p.sample_noise(x0.shape, g))


# --- (1) kernel marginal test with the true x0 (THEORY §3.3) ---------------------------------------
@pytest.mark.parametrize("name", ["mask", "edit"])
@pytest.mark.parametrize("schedule", ["count", "linear", "cosine"])
@pytest.mark.parametrize("kernel", ["K1", "K0"])
def test_kernel_marginal_with_true_x0(name: str, schedule: str, kernel: str) -> None:
    p = make(name, schedule)
    n = 20_000
    g = torch.Generator().manual_seed(7)
    x0 = X0.expand(n, L)
    for t, s in COUNT_STEPS if schedule == "count" else CONT_STEPS:
        x_t = p.corrupt(x0, t, p.sample_noise(x0.shape, g))
        x_s = KERNELS.get(kernel)(p, x_t, x0, t, s, generator=g)
        direct = p.corrupt(x0, s, p.sample_noise(x0.shape, g))
        exact = state_law(p, X0, s)
        floor = bound(exact, n)
        assert exact.tv(x_s) <= floor, (t, s, exact.tv(x_s), floor)
        assert exact.tv(direct) <= floor, (t, s, exact.tv(direct), floor)
        two_sample = 0.5 * float((exact.empirical(x_s) - exact.empirical(direct)).abs().sum())
        assert two_sample <= math.sqrt(2) * floor, (t, s, two_sample, floor)
        # x_t itself follows exp(log_kernel) at time t
        law_t = state_law(p, X0, t)
        assert law_t.tv(x_t) <= bound(law_t, n), (t, law_t.tv(x_t))


@pytest.mark.parametrize("name", ["mask", "edit"])
@pytest.mark.parametrize("schedule", ["count", "cosine"])
def test_k1_reverts_a_random_subset_of_the_corrupted_set(name: str, schedule: str) -> None:
    """K1 with the true x0: s = t is the identity, s = 0 gives x0, and the kept set is inside C_t."""
    p = make(name, schedule)
    g = torch.Generator().manual_seed(3)
    x0 = DATA.sample(500, g)
    t, s = (3.0, 1.0) if schedule == "count" else (0.8, 0.3)
    x_t = p.corrupt(x0, t, p.sample_noise(x0.shape, g))
    k1 = KERNELS.get("K1")
    assert torch.equal(k1(p, x_t, x0, t, t, generator=g), x_t)
    assert torch.equal(k1(p, x_t, x0, t, 0.0, generator=g), x0)
    x_s = k1(p, x_t, x0, t, s, generator=g)
    c_t, c_s = p.corrupted(x_t, x0), p.corrupted(x_s, x0)
    assert not (c_s & ~c_t).any()
    assert torch.equal(x_s[c_s], x_t[c_s])
    if schedule == "count":
        assert (c_s.sum(-1) == s).all()


# --- (8) log_kernel normalizes --------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mask", "edit"])
@pytest.mark.parametrize("schedule", ["count", "linear", "cosine"])
def test_log_kernel_normalizes(name: str, schedule: str) -> None:
    p = make(name, schedule)
    times = [0, 1, 2, 3, 4] if schedule == "count" else [0.0, 0.013, 0.5, 0.97, 1.0]
    states = all_states(p).sequences
    for x0 in (X0, torch.tensor([[2, 2, 0, 1]])):
        for t in times:
            total = float(torch.exp(p.log_kernel(states, x0.expand(len(states), L), t)).sum())
            assert abs(total - 1.0) < 1e-12, (t, total)
    # t = 0 is a point mass at x0, t = t_max has every position corrupted
    assert abs(float(p.log_kernel(X0, X0, 0))) < 1e-12
    full = p.corrupt(X0, p.t_max, p.sample_noise(X0.shape, 0))
    assert bool(p.corrupted(full, X0).all())


# --- (2) edit invertibility -----------------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["count", "linear", "cosine"])
def test_edit_invertibility(schedule: str) -> None:
    p = make("edit", schedule)
    g = torch.Generator().manual_seed(11)
    x0 = DATA.sample(2000, g)
    eps = p.sample_noise(x0.shape, g)
    assert eps.shape == (2000, L, 2) and eps.dtype == torch.float64
    for t in ([1, 2, 3, 4] if schedule == "count" else [0.2, 0.6, 1.0]):
        x_t = p.corrupt(x0, t, eps)
        changed = x_t != x0
        # the changed set is exactly the set the keys selected: replacements always differ
        assert torch.equal(changed, p._corruption_mask(eps[..., 0], t))
        if schedule == "count":
            assert (changed.sum(-1) == t).all()
        rec = p.recover_noise(x0, x_t, t, generator=g)
        assert torch.equal(p.corrupt(x0, t, rec), x_t)
        # offsets on C are recovered exactly; the recovered keys select C again
        assert torch.equal(p._offsets(rec[..., 1])[changed], p._offsets(eps[..., 1])[changed])
        assert torch.equal(torch.remainder(x_t - x0, V)[changed], p._offsets(rec[..., 1])[changed])
        assert torch.equal(p._corruption_mask(rec[..., 0], t), changed)
    # replacement tokens are uniform over the V - 1 others: offsets 1 and 2 equally often
    x_t = p.corrupt(x0, p.t_max, eps)
    share = float((torch.remainder(x_t - x0, V) == 1).double().mean())
    assert abs(share - 0.5) < 4 * math.sqrt(0.25 / x0.numel())


@pytest.mark.parametrize("name", ["mask", "edit"])
def test_per_sample_times(name: str) -> None:
    """t may be one time per sequence (training): row i is corrupted at its own t_i, and log_kernel agrees."""
    p = make(name)
    g = torch.Generator().manual_seed(4)
    x0 = DATA.sample(5, g)
    t = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    eps = p.sample_noise(x0.shape, g)
    x_t = p.corrupt(x0, t, eps)
    assert torch.equal(p.corrupted(x_t, x0).sum(-1), t.long())
    for i in range(5):
        assert torch.equal(x_t[i], p.corrupt(x0[i : i + 1], float(t[i]), eps[i : i + 1])[0])
        assert float(p.log_kernel(x_t, x0, t)[i]) == float(p.log_kernel(x_t[i : i + 1], x0[i : i + 1], float(t[i])))


def test_mask_inversion_and_estimate() -> None:
    p = make("mask", "count")
    g = torch.Generator().manual_seed(12)
    x0 = DATA.sample(300, g)
    x_t = p.corrupt(x0, 2, p.sample_noise(x0.shape, g))
    assert ((x_t == p.mask_id).sum(-1) == 2).all()
    assert torch.equal(p.corrupt(x0, 2, p.recover_noise(x0, x_t, 2, generator=g)), x_t)
    # an integer draw is a candidate x0: unmasked positions are forced to x_t
    wrong = torch.zeros_like(x0)
    est = p.estimate_x0(wrong, x_t, 2, generator=g)
    assert torch.equal(est[x_t != p.mask_id], x_t[x_t != p.mask_id]) and (est[x_t == p.mask_id] == 0).all()
    # logits: only masked positions are drawn, and the mask column is never drawn
    logits = torch.zeros(*x0.shape, V + 1)
    logits[..., V] = 50.0
    est = p.estimate_x0(logits, x_t, 2, generator=g)
    assert int(est.max()) < V and torch.equal(est[x_t != p.mask_id], x_t[x_t != p.mask_id])


@pytest.mark.parametrize("schedule", ["count", "linear"])
def test_edit_estimate_from_logits(schedule: str) -> None:
    """From logits: count changes exactly t positions; every changed token differs from x_t."""
    p = make("edit", schedule)
    g = torch.Generator().manual_seed(13)
    t = 2 if schedule == "count" else 0.5
    x_t = exact_start(p, 400, 13)
    logits = torch.randn(400, L, V, generator=g, dtype=torch.float64)
    for temperature in (1.0, 0.0):
        q = make("edit", schedule, temperature=temperature)
        est = q.estimate_x0(logits, x_t, t, generator=g)
        if schedule == "count":
            assert ((est != x_t).sum(-1) == t).all()
        assert int(est.min()) >= 0 and int(est.max()) < V
    # greedy is deterministic
    q = make("edit", schedule, temperature=0.0)
    assert torch.equal(q.estimate_x0(logits, x_t, t, generator=1), q.estimate_x0(logits, x_t, t, generator=2))
    # an integer draw is returned as is
    assert torch.equal(p.estimate_x0(x_t.flip(0), x_t, t), x_t.flip(0))


# --- (3) oracle posterior: exact sampling for any grid (THEORY §3.1 consequence 2, §4.7) -----------
EXACT_CASES = [
    ("mask", "count", 4, "udm_deterministic"),  # one position per step
    ("mask", "count", 2, "udm_deterministic"),  # two per step
    ("mask", "linear", 3, "udm_deterministic"),
    ("mask", "cosine", 2, "udm_deterministic"),
    ("edit", "count", 4, "udm_deterministic"),
    ("edit", "count", 2, "udm_deterministic"),
    ("edit", "cosine", 3, "udm_deterministic"),
    ("mask", "count", 4, "udm_baseline"),  # (5) K0 with the exact posterior is exact too
    ("mask", "linear", 2, "udm_baseline"),
    ("edit", "count", 4, "udm_baseline"),
]


def run_oracle(name: str, schedule: str, steps: int, sampler: str, n: int, seed: int) -> torch.Tensor:
    """Sample with the exact posterior sampler; the mask prior is exact, the edit one is replaced by the exact x_T law."""
    p = make(name, schedule)
    den = DATA.posterior_sampler(p, generator=seed, strict=True)
    start = {"shape": (n, L)} if name == "mask" else {"x_T": exact_start(p, n, seed + 1)}
    out = udm.sample(den, sampler, steps=steps, process=p, generator=seed + 2, **start)
    assert out.dtype == torch.int64 and out.shape == (n, L)
    return out


@pytest.mark.parametrize("name,schedule,steps,sampler", EXACT_CASES)
def test_oracle_posterior_is_exact(name: str, schedule: str, steps: int, sampler: str) -> None:
    tvs = {}
    for n in (2000, 32000):
        tv = DATA.tv(run_oracle(name, schedule, steps, sampler, n, seed=100 + n))
        assert tv <= DATA_BOUND[n], (n, tv, DATA_BOUND[n], DATA.expected_tv(n))
        tvs[n] = tv
    assert tvs[32000] < tvs[2000]


def one_per_step_chain(p: DiscreteProcess, law: torch.Tensor) -> torch.Tensor:
    """The exact law after the K1 one-per-step sampler (count schedule) with the exact posterior, from ``law`` at t = L.

    Propagates the law over all states: from x_t, draw x0 ~ p(x0 | x_t) and
    revert one uniformly chosen corrupted position to x0 (THEORY §4.3 step 3, §4.4).
    """
    states = all_states(p)
    ns, n0 = states.sequences.shape[0], DATA.sequences.shape[0]
    x_t = states.sequences[:, None, :].expand(ns, n0, L)
    x0 = DATA.sequences[None, :, :].expand(ns, n0, L)
    for t in range(L, 0, -1):
        joint = torch.exp(p.log_kernel(x_t.reshape(-1, L), x0.reshape(-1, L), t)).reshape(ns, n0) * DATA.probs[None]
        evidence = joint.sum(1, keepdim=True)
        assert float(law[evidence[:, 0] == 0].sum()) == 0.0, "the chain reached a state the data cannot produce"
        post = torch.where(evidence > 0, joint / evidence.clamp_min(1e-300), torch.zeros_like(joint))
        changed = p.corrupted(x_t, x0)
        new = torch.zeros_like(law)
        for c in range(L):
            y = x_t.clone()
            y[..., c] = x0[..., c]
            weight = law[:, None] * post * changed[..., c] / t
            new.scatter_add_(0, states.index(y).reshape(-1), weight.reshape(-1))
        law = new
    return law


@pytest.mark.parametrize("name", ["mask", "edit"])
def test_one_per_step_chain_is_exact(name: str) -> None:
    """Exact (no Monte Carlo) check of §3.1 consequence 2: from the exact x_T law the chain lands on p(x0)."""
    p = make(name)
    states = all_states(p).sequences
    n0 = len(DATA.sequences)
    log_k = p.log_kernel(states.repeat_interleave(n0, 0), DATA.sequences.repeat(len(states), 1), L)
    law_T = torch.exp(log_k).reshape(len(states), n0) @ DATA.probs
    final = one_per_step_chain(p, law_T)
    index = all_states(p).index(DATA.sequences)
    torch.testing.assert_close(final[index], DATA.probs, rtol=0, atol=1e-12)
    assert abs(float(final.sum()) - 1.0) < 1e-12


def test_edit_uniform_prior_gives_the_predicted_law() -> None:
    """From the uniform prior of §4.3 the exact-posterior sampler is NOT exact: it follows the exactly propagated law."""
    p = make("edit", "count")
    predicted = EnumeratedSequences(one_per_step_chain(p, torch.full((V**L,), 1.0 / V**L, dtype=torch.float64)), V, L)
    bias = 0.5 * float((predicted.probs - DATA.probs).abs().sum())
    n = 32000
    out = udm.sample(DATA.posterior_sampler(p, generator=5), "udm_deterministic", steps=L, shape=(n, L), process=p, generator=6)
    assert predicted.tv(out) <= bound(predicted, n), (predicted.tv(out), bound(predicted, n))
    # the prior mismatch is real on this toy (V = 3), though below the sampling noise at n = 32000 (about 0.02)
    assert 0.01 < bias < 0.02, bias


# --- (4) exact MARGINALS: one-per-step mask sampling is random-order autoregression (§4.4) ---------
def test_mask_marginals_one_per_step_is_exact() -> None:
    p = make("mask", "count")
    den = DATA.posterior_marginals(p, strict=True)
    tvs = {}
    for n in (2000, 32000):
        out = udm.sample(den, "udm_deterministic", steps=L, shape=(n, L), process=p, generator=n)
        tvs[n] = DATA.tv(out)
        assert tvs[n] <= DATA_BOUND[n], (n, tvs[n], DATA_BOUND[n])
    assert tvs[32000] < tvs[2000]
    # power check: filling all positions at once from the marginals ignores their correlation
    n = 32000
    at_once = udm.sample(DATA.posterior_marginals(p), "udm_deterministic", steps=1, shape=(n, L), process=p, generator=1)
    assert DATA.tv(at_once) > 5 * DATA_BOUND[n], DATA.tv(at_once)


def test_marginal_logits_shape() -> None:
    for name, width in (("mask", V + 1), ("edit", V)):
        p = make(name)
        x_t = exact_start(p, 8, 0)
        logits = DATA.posterior_marginals(p)(x_t, p.t_max)
        assert logits.shape == (8, L, width) and bool(torch.isfinite(logits).all())
        torch.testing.assert_close(torch.softmax(logits, -1).sum(-1), torch.ones(8, L, dtype=torch.float64))
        if name == "mask":
            assert float(torch.softmax(logits, -1)[..., V].max()) == 0.0


def test_posterior_off_the_data_support() -> None:
    """A state the data cannot produce: uniform over the x0 that could (the vanishing-smoothing limit), or an error."""
    p = make("mask", "count")
    x_t = torch.tensor([[2, 3, 3, 0]])  # x0 = (2, *, *, 0) has probability 0 in DATA
    post = DATA.posterior(p, x_t, 2)[0]
    consistent = (DATA.sequences[:, 0] == 2) & (DATA.sequences[:, 3] == 0)
    torch.testing.assert_close(post, consistent.double() / 9)
    with pytest.raises(ValueError, match="cannot be produced by the data"):
        DATA.posterior(p, x_t, 2, strict=True)
    with pytest.raises(ValueError, match="cannot be produced by any sequence"):
        DATA.posterior(p, x_t, 1)  # two masks at t = 1: impossible for every x0


def test_per_sample_seeds_do_not_depend_on_batch() -> None:
    for name in ("mask", "edit"):
        p = make(name)
        den = DATA.posterior_marginals(p)
        x_T = p.prior((4, L), 0)
        batch = udm.sample(den, "udm_deterministic", steps=L, x_T=x_T, process=p, seeds=[1, 2, 3, 4])
        alone = udm.sample(den, "udm_deterministic", steps=L, x_T=x_T[2:3], process=p, seeds=[3])
        assert torch.equal(batch[2:3], alone)


# --- the ELBO weight (§4.4, MD4 / MDLM) ---------------------------------------------------------
def _masked_nll(p: MaskProcess, x0: torch.Tensor, pattern: tuple[bool, ...]) -> float:
    """sum over masked i of -log p(x0_i | x_t) for x_t = x0 masked at ``pattern``, from the exact marginals.

    The mask posterior depends on x_t only (not on t), so any time at which the pattern is possible will do.
    """
    m = torch.tensor(pattern)
    x_t = torch.where(m, torch.full_like(x0, p.mask_id), x0)[None]
    marg = DATA.marginals(p, x_t, sum(pattern) if p.schedule == "count" else 0.5)[0]
    return float(-torch.log(marg[torch.arange(L), x0])[m].sum())


@pytest.mark.parametrize("schedule", ["count", "linear", "cosine"])
def test_mask_elbo_is_tight_with_exact_conditionals(schedule: str) -> None:
    """E_t[w(t) sum_masked -log p(x0_i | x_t)] = -log p(x0) for the exact conditionals (chain rule, any order)."""
    p = make("mask", schedule)
    patterns = [pt for pt in itertools.product([False, True], repeat=L) if any(pt)]
    if schedule == "count":
        coef = {k: float(p.elbo_weight(k)) / L / math.comb(L, k) for k in range(1, L + 1)}
    else:
        def integrand(t: float, k: int) -> float:
            m = float(p.rate(t))
            return float(p.elbo_weight(t)) * m**k * (1 - m) ** (L - k)

        coef = {k: scipy.integrate.quad(integrand, 0, 1, args=(k,), epsabs=1e-13, epsrel=1e-11)[0] for k in range(1, L + 1)}
    for j in torch.nonzero(DATA.probs > 0)[:12, 0].tolist():
        x0 = DATA.sequences[j]
        bound = sum(coef[sum(pt)] * _masked_nll(p, x0, pt) for pt in patterns)
        assert abs(bound + math.log(float(DATA.probs[j]))) < 1e-9, (j, bound, -math.log(float(DATA.probs[j])))


# --- (6) MaskGIT confidence order ---------------------------------------------------------------
def test_mask_confidence_reveals_everything() -> None:
    p = make("mask", "count")
    times = torch.tensor([4.0, 2.0, 1.0, 0.0], dtype=torch.float64)
    seen = []
    out = mask_confidence(DATA.posterior_marginals(p), p, p.prior((500, L)), times, generator=0, callback=seen.append)
    assert out.shape == (500, L) and int(out.max()) < V and int(out.min()) >= 0
    assert [int((s["x"] == p.mask_id).sum(-1).max()) for s in seen] == [2, 1, 0]
    # tokens that the data never produces at a position are never drawn with exact marginals
    assert float(DATA.probs[DATA.index(out)].min()) > 0
    # an untrained network, continuous schedule
    q = make("mask", "cosine")
    net = SequenceTransformer(vocab_size=q.input_vocab_size, seq_len=L, hidden=16, depth=1, num_heads=2).eval()
    with torch.no_grad():
        grid = torch.linspace(1, 0, 4, dtype=torch.float64)
        out = mask_confidence(lambda x, t: net(x, t), q, q.prior((16, L)), grid, temperature=0.0)
    assert int(out.max()) < V
    with pytest.raises(ValueError, match="needs the mask process"):
        mask_confidence(DATA.posterior_marginals(make("edit")), make("edit"), exact_start(make("edit"), 4, 0), times)
    with pytest.raises(ValueError, match="needs logits"):
        mask_confidence(DATA.posterior_sampler(p), p, p.prior((4, L)), times)


# --- (7) bad input and configuration ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["mask", "edit"])
def test_bad_input(name: str) -> None:
    p = make(name)
    with pytest.raises(ValueError, match=r"token id 3 .*outside the range \[0, 2\]"):
        p.validate(torch.tensor([[0, 1, 3, 0]]))
    with pytest.raises(ValueError, match=r"token id -1 .*outside"):
        p.corrupt(torch.tensor([[0, -1, 2, 0]]), 1, p.sample_noise((1, L)))
    with pytest.raises(ValueError, match=r"length 5 .*seq_len=4.*length 1\.\.4 are allowed"):
        p.validate(torch.zeros(2, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match="integer token ids"):
        p.validate(torch.zeros(2, L))
    with pytest.raises(ValueError, match="integer times"):
        p.corrupt(X0, 1.5, p.sample_noise(X0.shape))
    with pytest.raises(ValueError, match="integer times"):
        udm.sample(DATA.posterior_sampler(p), "udm_deterministic", steps=3, shape=(2, L), process=p)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 4\]"):
        p.corrupt(X0, 5, p.sample_noise(X0.shape))
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        make(name, "linear").corrupt(X0, 1.5, p.sample_noise(X0.shape))
    with pytest.raises(ValueError, match="unknown schedule 'quadratic'"):
        make(name, "quadratic")
    if name == "mask":  # the mask id is a valid state, but not valid data
        p.validate_state(torch.tensor([[3, 3, 0, 1]]))
        with pytest.raises(ValueError, match="token id 3"):
            p.validate(torch.tensor([[3, 3, 0, 1]]))
    else:
        with pytest.raises(ValueError, match="vocab_size >= 2"):
            EditProcess(1, L)


@pytest.mark.parametrize("name", ["mask", "edit"])
def test_config_shapes_and_rates(name: str) -> None:
    p = make(name, "cosine", temperature=0.5)
    cfg = p.config()
    assert json.loads(json.dumps(cfg)) == cfg == {"vocab_size": V, "seq_len": L, "schedule": "cosine", "temperature": 0.5}
    assert type(p)(**cfg).config() == cfg and p.name == name
    assert p.output_shape((5, L)) == (5, L, V + 1 if name == "mask" else V)
    # a token process: the network embeds input_vocab_size ids; only the mask process restricts the loss positions
    assert isinstance(p, udm.processes.TokenProcess) and p.network_options() == {"vocab_size": p.input_vocab_size}
    x0, x_t = torch.zeros(2, L, dtype=torch.long), torch.full((2, L), V)
    assert bool(p.loss_positions(x_t, x0).all()) and p.bind(None) is p and p.fit(x0, seed=0) == {}
    assert (p.t_max, p.t_eps) == (1.0, 1e-3) and (make(name).t_max, make(name).t_eps) == (L, 1)
    assert float(p.rate(1.0)) == 1.0 and float(p.rate(0.0)) == 0.0
    m = p.rate(torch.tensor([0.3, 0.9], dtype=torch.float64))
    torch.testing.assert_close(m, 1 - torch.cos(torch.tensor([0.15, 0.45], dtype=torch.float64) * math.pi))
    assert float(make(name).rate(3)) == 0.75
    # a shorter sequence than seq_len is fine; the count schedule caps t at its length
    short = torch.tensor([[1, 0]])
    assert bool(make(name).corrupted(make(name).corrupt(short, 4, make(name).sample_noise(short.shape, 0)), short).all())
