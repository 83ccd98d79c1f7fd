"""The masking (absorbing-state) process of THEORY §4.4: MLM / MaskGIT / MD4 / MDLM as a UDM process.

F_t(x0, eps) sets the corrupted positions (chosen by the keys eps, see
:mod:`udm.processes.discrete`) to ``mask_id = V``; x_T is all-mask. The
network sees ids in 0..V (``input_vocab_size = V + 1``) and returns logits
over V + 1 classes, of which the mask column is ignored.

The two samplers of §4.4 are the generic kernels of :mod:`udm.kernels`:

* K0 (baseline): x0_hat = the masked positions drawn from the network, then
  re-mask a fresh random subset of x0_hat;
* K1 (improved): keep a uniformly random subset of the currently masked
  positions masked and reveal the others with x0_hat's tokens. With a unit
  grid in the count schedule this fills one uniformly chosen masked position
  per step: MLM Gibbs sampling, i.e. random-order autoregression, exact with
  the exact per-position conditionals p(x0_i | x_t).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import rng
from .discrete import DiscreteProcess, sample_categorical

Tensor = torch.Tensor


class MaskProcess(DiscreteProcess):
    """Absorbing-state corruption: corrupted tokens become ``mask_id = vocab_size`` (THEORY §4.4).

    ``schedule`` is ``"count"`` (t = number of masked positions, integer),
    ``"linear"`` or ``"cosine"`` (continuous t in [0, 1], mask probability m(t));
    ``temperature`` scales the logits when x0_hat is drawn from them.
    """

    name = "mask"

    def __init__(self, vocab_size: int, seq_len: int, schedule: str = "count", temperature: float = 1.0) -> None:
        super().__init__(vocab_size, seq_len, schedule, temperature)
        self.mask_id = self.vocab_size

    @property
    def input_vocab_size(self) -> int:
        """V + 1: the data tokens and the mask id."""
        return self.vocab_size + 1

    def corrupted(self, x_t: Tensor, x0: Tensor | None = None) -> Tensor:
        """The masked positions (x0 is not needed: the mask is visible)."""
        return x_t == self.mask_id

    def state_time(self, x_t: Tensor, t: float) -> float | Tensor:
        """t, or per sequence the time its number of masks shows where F_t cannot have produced that number.

        A projection that writes observed tokens (infill, :mod:`udm.conditioning`)
        leaves fewer masks than the forward process has at the grid time t:

        * count schedule: t *is* the number of masked positions (min(t, L') for
          sequences of length L'), so a state with k masks is a state of time k
          and of no other;
        * continuous schedules: every position is masked independently with
          probability m(t), so any number of masks is possible for 0 < m(t) < 1
          and t is kept; at m(t) = 1 (the start, t = 1) only the all-mask
          state is, and a state with k of L' masked gets the time with
          m = k / L'.

        The mask posterior p(x0 | x_t) depends on the visible tokens only, so it
        is the same at any time at which the state is possible; the denoiser must
        just not be asked at a time where the state has probability 0 (the exact
        posterior is undefined there, and a network never saw it). An
        unconditional run always gets t back unchanged; otherwise the times are
        a float64 tensor of shape (B,).
        """
        k = self.corrupted(x_t).sum(-1).to(torch.float64)
        n = x_t.shape[-1]
        if self.schedule == "count":
            possible, own = k == min(round(float(t)), n), k
        else:
            m = float(self.rate(t))
            if m >= 1.0:
                possible = k == n
            elif m <= 0.0:
                possible = k == 0
            else:
                possible = torch.ones_like(k, dtype=torch.bool)
            own = self.rate_inverse(k / n)
        if bool(possible.all()):
            return t
        return torch.where(possible, torch.full_like(k, float(t)), own)

    def loss_positions(self, x_t: Tensor, x0: Tensor) -> Tensor:
        """Where the cross-entropy counts: the masked positions (the visible ones are x0 itself, THEORY §4.4)."""
        return self.corrupted(x_t, x0)

    def _log_replacement(self) -> float:
        return 0.0

    def corrupt(self, x0: Tensor, t: float | Tensor, eps: Tensor) -> Tensor:
        """x_t = F_t(x0, eps): mask the positions selected by the keys eps (B, L) at time t."""
        self.validate(x0)
        if eps.shape != x0.shape:
            raise ValueError(f"mask process noise must have the data's shape {tuple(x0.shape)}, got {tuple(eps.shape)}")
        hit = self._corruption_mask(eps, t)
        return torch.where(hit, torch.full_like(x0, self.mask_id), x0)

    def recover_noise(
        self, x0: Tensor, x_t: Tensor, t: float | Tensor, *, generator: rng.GeneratorLike = None
    ) -> Tensor:
        """Keys drawn from their law given the visible masked set (THEORY §3.1 K1; see :mod:`.discrete`)."""
        self._check_pair(x0, x_t)
        return self._draw_keys(self.corrupted(x_t), t, generator)

    def prior(
        self,
        shape: Sequence[int],
        generator: rng.GeneratorLike = None,
        *,
        dtype: torch.dtype = torch.int64,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """x_T: all mask (int64 whatever ``dtype``; the prior is deterministic)."""
        shape = self._sequence_shape(shape)
        return torch.full(shape, self.mask_id, dtype=torch.int64, device=device)

    def estimate_x0(
        self, out: Tensor, x_t: Tensor, t: float | Tensor, *, generator: rng.GeneratorLike = None
    ) -> Tensor:
        """x0_hat: the unmasked tokens of x_t, and at masked positions a draw from the denoiser (THEORY §4.4, step 1).

        ``out`` is either an integer draw of x0 of x_t's shape (e.g. from the
        exact posterior; its unmasked positions are overwritten with x_t's) or
        logits (..., V + 1) (or (..., V)), from which each masked position is
        drawn independently from softmax(logits[..., :V] / temperature).
        """
        if self._check_out(out, x_t):
            draw = out.to(x_t.dtype)
        else:
            draw = sample_categorical(self._probs(out, self.vocab_size), generator).to(x_t.dtype)
        return torch.where(self.corrupted(x_t), draw, x_t)

    def elbo_weight(self, t: float | Tensor) -> Tensor:
        """w(t) with E_t[w(t) sum_{masked i} -log q(x0_i | x_t)] >= -log p_q(x0), t uniform on the training range.

        count: w = L / t, t ~ U{1..L}; continuous: w = m'(t) / m(t), t ~ U(0, 1].

        Derivation (random-order autoregression; the absorbing-process ELBO of
        MD4 / MDLM). The one-per-step K1 sampler reveals the positions in a
        uniformly random order sigma, so its likelihood is
        p_q(x0) = E_sigma prod_k q(x0_{sigma_k} | x0 at sigma_<k), and by Jensen
        -log p_q(x0) <= E_sigma sum_k -log q(x0_{sigma_k} | x_{t_k}).

        * count: in the term where t positions are still masked, the masked set
          is a uniform t-subset (x_t ~ p(x_t | x0)) and the revealed position is
          uniform in it, so the term's mean is E[(1/t) sum_{masked i} -log q];
          summing t = 1..L gives L E_{t ~ U{1..L}}[(1/t) sum_{masked i} -log q].
        * continuous: position i is revealed when m(t) crosses its key u_i; with
          u_i = m(t), du_i = m'(t) dt, and the other positions masked i.i.d. with
          probability m(t), the sum becomes the integral over t in (0, 1] of
          (m'(t) / m(t)) E[sum_{masked i} -log q(x0_i | x_t)], since
          P(i masked) = m(t).

        With the exact conditionals the bound is an equality: every order
        factorises p(x0) by the chain rule. A training range [t_eps, 1] leaves
        out the integral over (0, t_eps), which is O(t_eps L) nats.
        """
        tt = torch.as_tensor(t, dtype=torch.float64)
        if self.schedule == "count":
            return self.seq_len / tt
        return self.rate_derivative(tt) / self.rate(tt)
