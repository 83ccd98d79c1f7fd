"""The invertible random-replacement ("edit") process of THEORY §4.3.

Each corrupted position is replaced by a token *different* from the original,
uniformly among the other V - 1:

    x_t[i] = (x0[i] + r_i) mod V,   r_i in {1, .., V - 1},

so comparing x0 with x_t reveals exactly which positions were changed (the
set C) and by which offsets r. The noise therefore has two parts per
position, stored on a last axis of size 2:

    eps[..., 0] = the key u_i in [0, 1) that decides whether i is corrupted (see :mod:`.discrete`),
    eps[..., 1] = a uniform w_i in [0, 1) giving the offset r_i = 1 + floor(w_i (V - 1)).

F_t^{-1} reads C = {x_t != x0} and r = (x_t - x0) mod V on C (w_i is set to the
middle of r_i's interval), draws the keys from their law given C, and draws
fresh offsets off C. K1 then keeps a uniformly random subset of C changed and
reverts the others to x0_hat: with a unit grid in the count schedule, one
position per step (THEORY §4.3, sampler step 3); with a grid of step k, k.

The prior is uniform random tokens, as in §4.3. It is the exact law of x_T
only for uniform data: x_T given x0 differs from x0 at every position, so
p(x_T) = sum_x0 p(x0) prod_i [x_T,i != x0_i] / (V - 1)^L, which departs from
uniform by O(L / V) (negligible for text vocabularies, visible on toy ones).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .. import rng
from .discrete import DiscreteProcess, key_ranks, sample_categorical

Tensor = torch.Tensor


class EditProcess(DiscreteProcess):
    """Invertible random replacement: corrupted tokens move to one of the V - 1 other tokens (THEORY §4.3).

    ``schedule`` is ``"count"`` (t = number of changed positions, integer),
    ``"linear"`` or ``"cosine"`` (continuous t in [0, 1]); ``temperature``
    scales the logits when x0_hat is drawn from them. Needs V >= 2.
    """

    name = "edit"

    def __init__(self, vocab_size: int, seq_len: int, schedule: str = "count", temperature: float = 1.0) -> None:
        super().__init__(vocab_size, seq_len, schedule, temperature)
        if vocab_size < 2:
            raise ValueError(
                f"the edit process replaces a token by a different one, so it needs vocab_size >= 2, got {vocab_size}"
            )

    def corrupted(self, x_t: Tensor, x0: Tensor) -> Tensor:
        """The changed positions C = {x_t != x0} (visible because replacements always differ)."""
        return x_t != x0

    def _log_replacement(self) -> float:
        return -math.log(self.vocab_size - 1)

    def _offsets(self, w: Tensor) -> Tensor:
        """r = 1 + floor(w (V - 1)) in {1, .., V - 1} for uniforms w in [0, 1)."""
        return 1 + torch.floor(w.to(torch.float64) * (self.vocab_size - 1)).clamp(0, self.vocab_size - 2).to(torch.int64)

    def sample_noise(
        self,
        shape: Sequence[int],
        generator: rng.GeneratorLike = None,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """eps ~ q of shape (*shape, 2): [..., 0] the keys, [..., 1] the offset uniforms; float64 always."""
        return rng.rand((*tuple(shape), 2), generator, dtype=torch.float64, device=device)

    def corrupt(self, x0: Tensor, t: float | Tensor, eps: Tensor) -> Tensor:
        """x_t = F_t(x0, eps): positions selected by the keys move by their offsets, mod V."""
        self.validate(x0)
        if eps.shape != (*x0.shape, 2):
            raise ValueError(
                f"edit process noise must have shape {(*x0.shape, 2)} (keys and offset uniforms), got {tuple(eps.shape)}"
            )
        hit = self._corruption_mask(eps[..., 0], t)
        moved = (x0 + self._offsets(eps[..., 1]).to(x0.device)) % self.vocab_size
        return torch.where(hit, moved.to(x0.dtype), x0)

    def recover_noise(
        self, x0: Tensor, x_t: Tensor, t: float | Tensor, *, generator: rng.GeneratorLike = None
    ) -> Tensor:
        """eps from its law given (x0, x_t): C and r read off exactly, keys drawn given C, fresh offsets off C."""
        self._check_pair(x0, x_t)
        changed = self.corrupted(x_t, x0)
        keys = self._draw_keys(changed, t, generator)
        fresh = rng.rand(x0.shape, generator, dtype=torch.float64, device=x0.device)
        r = torch.remainder(x_t - x0, self.vocab_size).to(torch.float64)
        w = torch.where(changed, (r - 0.5) / (self.vocab_size - 1), fresh)
        return torch.stack([keys, w], dim=-1)

    def prior(
        self,
        shape: Sequence[int],
        generator: rng.GeneratorLike = None,
        *,
        dtype: torch.dtype = torch.int64,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """x_T: i.i.d. uniform tokens (THEORY §4.3, sampler step 1); int64 whatever ``dtype``."""
        shape = self._sequence_shape(shape)
        u = rng.rand(shape, generator, dtype=torch.float64, device=device)
        return torch.floor(u * self.vocab_size).clamp_max(self.vocab_size - 1).to(torch.int64)

    def estimate_x0(
        self, out: Tensor, x_t: Tensor, t: float | Tensor, *, generator: rng.GeneratorLike = None
    ) -> Tensor:
        """x0_hat from the denoiser output (THEORY §4.3, sampler step 2).

        An integer tensor of x_t's shape is a draw of x0 already and is returned
        as is. From logits (..., V): p = softmax(logits / temperature) per
        position and p_c(i) = 1 - p[i, x_t[i]], the probability that i was
        changed. In the count schedule exactly t positions are chosen, without
        replacement with probability proportional to p_c (Gumbel top-k); in the
        continuous schedules each position independently with probability p_c.
        A chosen position takes a token != x_t[i] drawn proportionally to p
        (uniform among the others if p has no mass there). Temperature 0 is
        greedy: the t largest p_c (count) or p_c > 1/2, and the argmax token.
        """
        if self._check_out(out, x_t):
            return out.to(x_t.dtype)
        p = self._probs(out, self.vocab_size)
        here = x_t.unsqueeze(-1)
        p_changed = (1.0 - p.gather(-1, here).squeeze(-1)).clamp(0.0, 1.0)
        other = p.scatter(-1, here, 0.0)
        uniform_other = 1.0 - F.one_hot(x_t, self.vocab_size).to(torch.float64)
        other = torch.where(other.sum(-1, keepdim=True) > 0, other, uniform_other)
        greedy = self.temperature == 0.0
        if self.schedule == "count":
            n = self._time(t, x_t)
            score = p_changed
            if not greedy:
                u = rng.rand(x_t.shape, generator, dtype=torch.float64, device=x_t.device)
                score = torch.log(p_changed.clamp_min(1e-300)) - torch.log(-torch.log(u))
            changed = key_ranks(-score) < n
        elif greedy:
            changed = p_changed > 0.5
        else:
            changed = rng.rand(x_t.shape, generator, dtype=torch.float64, device=x_t.device) < p_changed
        tokens = other.argmax(-1) if greedy else sample_categorical(other, generator)
        return torch.where(changed, tokens.to(x_t.dtype), x_t)
