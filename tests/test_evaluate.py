"""Evaluation (udm.evaluate): floors averaged over subsets, metrics that fit the data kind, the ELBO bound, progress bars.

* the sliced-Wasserstein floor is the mean over several training subsets, reported with its spread (MMD's on
  request: it costs O(n^2 D)), and averaging makes the floor less noisy than one subset's value (THEORY §10.3);
* token data get n-gram distances with floors, never distances between ids as points; samples of the data law
  sit at the floor, samples of a wrong law far above it;
* the ELBO bound of the mask process with the exact conditionals is the held-out NLL (THEORY §4.4), for the
  count and the continuous schedules;
* the progress bars are silent by default and change no result.
"""

from __future__ import annotations

import math

import pytest
import torch

import udm
from udm.data import Dataset
from udm.denoiser import TokenDenoiser
from udm.evaluate import (FLOOR_REPEATS, continuous_metrics, draw_samples, ngram_frequencies, sample_metrics, token_metrics,
                          token_nll_bound)
from udm.metrics import sliced_wasserstein
from udm.theory.discrete import EnumeratedSequences

V, L = 3, 4


def _points(n: int, seed: int, shift: float = 0.0) -> Dataset:
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)) + shift
    return Dataset(x, None, None, "points", f"gauss{seed}")


def _law() -> EnumeratedSequences:
    """A correlated law over {0, 1, 2}^4."""
    probs = torch.rand(V**L, generator=torch.Generator().manual_seed(0), dtype=torch.float64) ** 3
    return EnumeratedSequences(probs, V, L)


def _tokens(law: EnumeratedSequences, n: int, seed: int) -> Dataset:
    return Dataset(law.sample(n, torch.Generator().manual_seed(seed)), None, None, "tokens", f"toy{seed}", vocab_size=V)


def test_the_floor_is_averaged_over_subsets_and_reports_its_spread() -> None:
    """sliced_wasserstein_floor is the mean of FLOOR_REPEATS subsets (the first is the old single subset), with its std."""
    train, test = _points(3000, 0), _points(400, 1)
    gen = torch.randn(400, 2, generator=torch.Generator().manual_seed(2))
    out = continuous_metrics(gen, test, train, seed=3)
    g = torch.Generator().manual_seed(3)
    ref = test.x.double()
    values = [float(sliced_wasserstein(train.x[torch.randperm(3000, generator=g)[:400]].double(), ref)) for _ in range(FLOOR_REPEATS)]
    assert out["floor_repeats"] == FLOOR_REPEATS == 5
    assert out["sliced_wasserstein_floor"] == pytest.approx(sum(values) / 5, rel=1e-12)
    assert out["sliced_wasserstein_floor_std"] == pytest.approx(float(torch.tensor(values, dtype=torch.float64).std()), rel=1e-12)
    assert out["mmd_floor_std"] == 0.0 and continuous_metrics(gen, test, train, seed=3, mmd_floor_repeats=3)["mmd_floor_std"] > 0
    assert out["sliced_wasserstein_ratio"] == out["sliced_wasserstein"] / out["sliced_wasserstein_floor"]
    single = continuous_metrics(gen, test, train, seed=3, floor_repeats=1)
    assert single["sliced_wasserstein_floor"] == pytest.approx(values[0], rel=1e-12) and single["sliced_wasserstein_floor_std"] == 0.0
    # over seeds, the averaged floor varies less than one subset's value (expected ratio sqrt(5))
    one = torch.tensor([continuous_metrics(gen, test, train, seed=s, floor_repeats=1)["sliced_wasserstein_floor"] for s in range(12)])
    five = torch.tensor([continuous_metrics(gen, test, train, seed=s)["sliced_wasserstein_floor"] for s in range(12)])
    assert float(five.std()) < 0.75 * float(one.std()), (float(five.std()), float(one.std()))


def test_ngram_frequencies() -> None:
    x = torch.tensor([[0, 1, 1, 3], [2, 2, 0, 1]])  # 3 is outside a vocabulary of 3 (an unfilled mask)
    uni = ngram_frequencies(x, 3, 1)
    torch.testing.assert_close(uni, torch.tensor([2, 3, 2], dtype=torch.float64) / 7)
    bi = ngram_frequencies(x, 3, 2).reshape(3, 3)
    expected = torch.zeros(3, 3, dtype=torch.float64)
    for a, b in ((0, 1), (1, 1), (2, 2), (2, 0), (0, 1)):
        expected[a, b] += 1 / 5
    torch.testing.assert_close(bi, expected)
    with pytest.raises(ValueError, match="2-grams need rows of at least 2 tokens"):
        ngram_frequencies(torch.zeros(3, 1, dtype=torch.int64), 3, 2)


def test_token_data_get_ngram_distances_at_the_floor_for_the_data_law() -> None:
    """Samples of the data law score within a few floor spreads of the floor; uniform ids and a stuck mask do not."""
    law = _law()
    train, test = _tokens(law, 4000, 0), _tokens(law, 600, 1)
    good = token_metrics(law.sample(600, torch.Generator().manual_seed(2)), test, train)
    assert "sliced_wasserstein" not in good and good["invalid_token_fraction"] == 0.0
    for name in ("unigram", "bigram"):
        assert good[f"{name}_tv"] < good[f"{name}_tv_floor"] + 4 * good[f"{name}_tv_floor_std"], good
        assert good[f"{name}_tv_floor_std"] > 0
    uniform = torch.randint(0, V, (600, L), generator=torch.Generator().manual_seed(3))
    bad = token_metrics(uniform, test, train)
    assert bad["bigram_tv"] > 3 * bad["bigram_tv_floor"] and bad["bigram_tv_ratio"] > 3
    stuck = law.sample(600, torch.Generator().manual_seed(4))
    stuck[:, 0] = V  # the mask id of a mask process
    assert token_metrics(stuck, test, train)["invalid_token_fraction"] == pytest.approx(0.25)
    assert sample_metrics(uniform, test, train) == bad  # dispatch by kind
    assert "sliced_wasserstein" in sample_metrics(torch.zeros(50, 2), _points(50, 5), _points(200, 6))


class _Exact(torch.nn.Module):
    """The exact per-position posteriors p(x0_i | x_t) of a toy law, as logits (what a perfect network outputs)."""

    def __init__(self, law: EnumeratedSequences, process) -> None:
        super().__init__()
        self.marginals = law.posterior_marginals(process)

    def forward(self, x, t, cond=None):
        return self.marginals(x, t.to(torch.float64))


@pytest.mark.parametrize("schedule", ["count", "linear"])
def test_elbo_bound_with_exact_conditionals_is_the_heldout_nll(schedule: str) -> None:
    """THEORY §4.4: with the exact conditionals the mask-process ELBO is tight, so the bound is the mean NLL per token."""
    law = _law()
    process = udm.get_process("mask", vocab_size=V, seq_len=L, schedule=schedule)
    model = TokenDenoiser(_Exact(law, process), process)
    x0 = law.sample(1500, torch.Generator().manual_seed(7))
    bound = token_nll_bound(model, x0, draws=4, seed=1, batch_size=500)
    nll = float(-torch.log(law.probs[law.index(x0)]).mean()) / L / math.log(2)
    slack = 3 * process.t_eps if schedule == "linear" else 0.0  # the bound leaves out t < t_eps
    assert abs(bound["nll_bound_bits_per_token"] - nll) < 4 * bound["nll_bound_bits_per_token_stderr"] + slack, (bound, nll)
    assert bound["nll_bound_omits_t_below"] == (0.0 if schedule == "count" else process.t_eps)
    train, test = Dataset(law.sample(2000, torch.Generator().manual_seed(8)), None, None, "tokens", "toy", vocab_size=V), \
        Dataset(x0, None, None, "tokens", "toy", vocab_size=V)
    metrics = sample_metrics(law.sample(1500, torch.Generator().manual_seed(9)), test, train, seed=1, model=model)
    assert metrics["nll_bound_bits_per_token"] == pytest.approx(bound["nll_bound_bits_per_token"], rel=1e-12)


def test_elbo_bound_errors() -> None:
    law = _law()
    edit = udm.get_process("edit", vocab_size=V, seq_len=L)
    with pytest.raises(ValueError, match="ELBO weight"):
        token_nll_bound(TokenDenoiser(_Exact(law, edit), edit), law.sample(4, 0))
    with pytest.raises(ValueError, match="carries its process"):
        token_nll_bound(lambda x, t: x, law.sample(4, 0))


def test_progress_bars_are_silent_by_default_and_change_nothing(capsys) -> None:
    """draw_samples(progress=True) draws a bar on stderr and the same samples; the user's callback still sees every step."""
    process = udm.get_process("vp")
    den = udm.Denoiser(lambda x, t: torch.zeros_like(x), process, "x0")
    quiet, nfe = draw_samples(den, (2,), 10, "euler", 5, batch_size=4)
    assert capsys.readouterr().err == ""
    steps = []
    loud, nfe2 = draw_samples(den, (2,), 10, "euler", 5, batch_size=4, progress=True, callback=lambda s: steps.append(s["i"]))
    assert "sampling (euler, 5 steps)" in capsys.readouterr().err
    torch.testing.assert_close(quiet, loud, rtol=0, atol=0)
    assert nfe == nfe2 and steps == [0, 1, 2, 3, 4] * 3
