"""An exact distribution over all V^L token sequences, and its exact posteriors (THEORY §3.3, §4.7).

For a toy vocabulary and length every sequence can be listed, so for any
process with a transition law ``process.log_kernel(x_t, x0, t)`` (the edit and
mask processes) the posterior p(x0 | x_t) ∝ p(x0) p(x_t | x0) is exact. Two
oracle denoisers are built from it:

* :meth:`EnumeratedSequences.posterior_sampler`: a draw x0 ~ p(x0 | x_t), the
  exact x0_hat of §3.1 consequence 2 (the UDM loop is then exact for any grid);
* :meth:`EnumeratedSequences.posterior_marginals`: the exact per-position
  marginals p(x0_i | x_t) as logits, what a perfectly trained token network
  outputs (§4.4: exact for the one-per-step mask sampler).

Plus the total-variation distance of a sample to the law, and its exact
expectation for an i.i.d. sample of the same size (the Monte-Carlo floor).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .. import rng
from ..processes.base import KernelDensity, Process, require
from ..processes.discrete import sample_categorical

Tensor = torch.Tensor

#: the logit of an impossible token: finite (samplers reject non-finite outputs) yet exp() underflows to 0.
IMPOSSIBLE_LOGIT = -1e30


class EnumeratedSequences:
    """p(x0) over all ``vocab_size ** seq_len`` sequences, listed in lexicographic order.

    ``probs`` (shape (V**L,), non-negative, normalised here) gives the
    probability of sequence number j, whose tokens are the base-V digits of j
    (most significant first): see :attr:`sequences` and :meth:`index`.
    """

    def __init__(self, probs: Tensor, vocab_size: int, seq_len: int) -> None:
        p = torch.as_tensor(probs, dtype=torch.float64).reshape(-1)
        n = vocab_size**seq_len
        if p.numel() != n:
            raise ValueError(f"probs must have vocab_size ** seq_len = {vocab_size}**{seq_len} = {n} entries, got {p.numel()}")
        if (p < 0).any() or not torch.isfinite(p).all() or float(p.sum()) <= 0:
            raise ValueError("probs must be finite, non-negative and have a positive sum")
        self.vocab_size, self.seq_len = vocab_size, seq_len
        self.probs = p / p.sum()
        digits = torch.arange(n).unsqueeze(1) // (vocab_size ** torch.arange(seq_len - 1, -1, -1)).unsqueeze(0)
        self.sequences = digits % vocab_size

    def index(self, x: Tensor) -> Tensor:
        """The number of each sequence in ``x`` (B, L): sum_i x_i V^(L - 1 - i)."""
        if x.shape[-1] != self.seq_len:
            raise ValueError(f"sequences must have length {self.seq_len}, got {x.shape[-1]}")
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size - 1}]")
        weights = self.vocab_size ** torch.arange(self.seq_len - 1, -1, -1, device=x.device)
        return (x.to(torch.int64) * weights).sum(-1)

    def sample(self, n: int, generator: rng.GeneratorLike = None) -> Tensor:
        """n i.i.d. draws, int64 of shape (n, L)."""
        j = sample_categorical(self.probs.expand(n, -1), generator)
        return self.sequences[j]

    def empirical(self, x: Tensor) -> Tensor:
        """The empirical law of the sequences ``x`` (B, L) as a vector over the V^L sequences."""
        counts = torch.bincount(self.index(x).cpu(), minlength=self.probs.numel()).to(torch.float64)
        return counts / max(x.shape[0], 1)

    def tv(self, x: Tensor) -> float:
        """Total variation distance between the empirical law of ``x`` and p."""
        return 0.5 * float((self.empirical(x) - self.probs).abs().sum())

    def expected_tv(self, n: int) -> float:
        """E TV(empirical law of n i.i.d. draws, p), exactly (de Moivre's mean absolute deviation of a binomial).

        E|X - np| = 2 k C(n, k) p^k (1 - p)^(n - k + 1) with k = floor(np) + 1,
        so E TV = (1 / 2n) sum_j E|X_j - n p_j|: the Monte-Carlo floor of a
        sampler test at sample size n.
        """
        total = 0.0
        for p in self.probs.tolist():
            if 0.0 < p < 1.0:
                k = math.floor(n * p) + 1
                if k <= n:
                    log_mad = (
                        math.log(2 * k) + math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                        + k * math.log(p) + (n - k + 1) * math.log1p(-p)
                    )
                    total += math.exp(log_mad)
        return total / (2 * n)

    def null_tvs(self, n: int, draws: int = 200, generator: torch.Generator | None = None) -> Tensor:
        """TV(empirical law, p) of ``draws`` independent i.i.d. samples of size n: the null distribution of :meth:`tv`.

        A sampler test can accept a TV up to, e.g., the mean plus 4 standard
        deviations of these (the Monte-Carlo floor with its spread, which
        matters when p has few states).
        """
        idx = torch.multinomial(self.probs.expand(draws, -1), n, replacement=True, generator=generator)
        counts = torch.zeros(draws, self.probs.numel(), dtype=torch.float64)
        counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
        return 0.5 * (counts / n - self.probs[None]).abs().sum(1)

    def posterior(self, process: Process, x_t: Tensor, t: float | Tensor, *, strict: bool = False) -> Tensor:
        """p(x0 = sequence j | x_t) for each row of x_t, shape (B, V^L), from ``process.log_kernel`` and p.

        Computed once per distinct (x_t, t) and gathered. An x_t that the data
        cannot produce at time t (an inexact sampler can reach one) has no
        posterior; it gets the limit of the posteriors of (1 - a) p + a uniform
        as a -> 0, i.e. uniform over the x0 that could have produced it, or a
        ValueError if ``strict``. An x_t that no sequence can produce always
        raises.
        """
        process = require(process, KernelDensity, "the exact posterior over sequences")
        tt = torch.as_tensor(t, dtype=torch.float64, device=x_t.device)
        key = x_t.to(torch.float64)
        if tt.ndim:
            key = torch.cat([key, tt.reshape(-1, 1)], dim=1)
        uniq, inverse = torch.unique(key, dim=0, return_inverse=True)
        u, n = uniq.shape[0], self.probs.numel()
        xs = uniq[:, : self.seq_len].to(torch.int64).repeat_interleave(n, 0)
        x0 = self.sequences.to(x_t.device).repeat(u, 1)
        tu = tt if not tt.ndim else uniq[:, self.seq_len].repeat_interleave(n)
        log_k = process.log_kernel(xs, x0, tu).reshape(u, n)
        log_joint = log_k + torch.log(self.probs.to(x_t.device))[None]
        off_support = ~torch.isfinite(torch.logsumexp(log_joint, dim=1))
        if off_support.any():
            first = uniq[int(torch.nonzero(off_support)[0])][: self.seq_len].to(torch.int64).tolist()
            impossible = ~torch.isfinite(torch.logsumexp(log_k, dim=1))
            if strict or impossible.any():
                why = "any sequence" if impossible.any() else "the data"
                raise ValueError(f"x_t = {first} cannot be produced by {why} at t = {t}; its posterior is undefined")
            log_joint = torch.where(off_support[:, None], log_k, log_joint)
        return torch.softmax(log_joint, dim=1)[inverse]

    def marginals(self, process: Process, x_t: Tensor, t: float | Tensor, *, strict: bool = False) -> Tensor:
        """p(x0_i = v | x_t) for every position i and token v, shape (B, L, V) (``strict`` as in :meth:`posterior`)."""
        onehot = torch.nn.functional.one_hot(self.sequences, self.vocab_size).to(torch.float64).to(x_t.device)
        return torch.einsum("bn,nlv->blv", self.posterior(process, x_t, t, strict=strict), onehot)

    def posterior_sampler(
        self, process: Process, generator: rng.GeneratorLike = None, *, strict: bool = False
    ) -> Callable[[Tensor, float], Tensor]:
        """A denoiser (x_t, t) -> an int64 draw of x0 from the exact posterior (THEORY §3.1, consequence 2).

        It draws from its own ``generator`` (a denoiser takes no generator).
        """
        gen = rng.as_generator(generator)

        def denoise(x_t: Tensor, t: float | Tensor) -> Tensor:
            post = self.posterior(process, x_t, t, strict=strict)
            return self.sequences.to(x_t.device)[sample_categorical(post, gen)]

        return denoise

    def posterior_marginals(self, process: Process, *, strict: bool = False) -> Callable[[Tensor, float], Tensor]:
        """A denoiser (x_t, t) -> exact log-marginals as logits, shape ``process.output_shape(x_t.shape)``.

        (B, L, V) for the edit process, (B, L, V + 1) for the mask process with
        the mask column impossible (``strict`` as in :meth:`posterior`). Impossible entries are
        :data:`IMPOSSIBLE_LOGIT` rather than -inf, so the samplers' finiteness
        check passes and softmax still gives them probability 0.
        """

        def denoise(x_t: Tensor, t: float | Tensor) -> Tensor:
            marg = self.marginals(process, x_t, t, strict=strict)
            width = process.output_shape(x_t.shape)[-1]
            if width > self.vocab_size:
                pad = torch.zeros(*marg.shape[:-1], width - self.vocab_size, dtype=marg.dtype, device=marg.device)
                marg = torch.cat([marg, pad], dim=-1)
            return torch.log(marg).clamp_min(IMPOSSIBLE_LOGIT)

        return denoise
