"""Per-sample Brownian paths, queried at any time: a virtual Brownian tree on counter-based normals.

A stochastic sampler of the reverse-SDE family (THEORY §2.1,
dx = [f x - (g^2 + sigma_r^2)/2 score] dt + sigma_r dw) needs, for each step, the
increment of one Brownian motion over that step. Fresh normals at every step
make a sample change with the step count; one tree for the whole batch
(torchsde's, used by k-diffusion) makes it change with the batch size. Here
each sample owns its path: W_i(w) is a deterministic function of that sample's
64-bit key and of w, nothing else. So

* a sample is the same alone or inside a batch (its key is drawn from its own
  generator, :func:`udm.rng.generators_from_seeds`);
* increments add up, W(c) - W(a) = (W(c) - W(b)) + (W(b) - W(a)): a grid of 2n
  steps refines the path that n steps sample instead of drawing another one.

Construction (the "virtual Brownian tree" of Li et al. 2020, "Scalable
gradients for stochastic differential equations", §4): on a fixed range
[w_lo, w_hi] of the time w, W(0) = 0, W(w_lo) ~ N(0, w_lo) and
W(w_hi) - W(w_lo) ~ N(0, w_hi - w_lo); every interval [a, b] of the dyadic
subdivision *in u = log w* is split at its midpoint m by the Brownian bridge

    W(m) = W(a) + (w_m - w_a)/(w_b - w_a) (W(b) - W(a)) + sqrt((w_m - w_a)(w_b - w_m)/(w_b - w_a)) z_node,

with z_node a standard normal indexed by (key, node). The split points are
dyadic in log w but the bridge is exact in w, so W is exactly Brownian at every
tree point and the tree resolves small and large w alike. A query descends
``depth`` levels to the leaf holding w and returns the bridge mean there (linear
interpolation); it differs from an exact path by a Brownian bridge over one
leaf, relative error ~ sqrt(leaf width in u)/2 (~4e-5 at the default depth 36).

The normals are counter-based: splitmix64 (Steele, Lea and Flood 2014) of
(key, node, index) in int64 torch arithmetic gives two 32-bit uniforms, and
Box-Muller two normals. Values are computed in float64 on the CPU and then
moved, as :mod:`udm.rng` does, so CPU and GPU runs see the same path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from . import rng

Tensor = torch.Tensor


def _signed(value: int) -> int:
    """A 64-bit unsigned constant as the int64 with the same bits."""
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)
_LOW32 = (1 << 32) - 1
#: Tree levels whose normals a path keeps from one query to the next (memory: this many (batch, count) float64 rows).
_CACHED_LEVELS = 16


def _shift_right(x: Tensor, k: int) -> Tensor:
    """Logical right shift of int64 bits (torch's >> on int64 is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def mix64(x: Tensor) -> Tensor:
    """splitmix64's finalizer on int64 tensors (wrapping arithmetic): a bijection that scrambles all 64 bits."""
    x = x ^ _shift_right(x, 30)
    x = x * _MIX1
    x = x ^ _shift_right(x, 27)
    x = x * _MIX2
    return x ^ _shift_right(x, 31)


def counter_normals(keys: Tensor, nodes: Tensor, count: int) -> Tensor:
    """Standard normals of shape (len(nodes), len(keys), count): entry [l, b, j] depends only on (keys[b], nodes[l], j)."""
    stream = mix64(keys[None, :] ^ mix64(nodes * _GOLDEN + 1)[:, None])
    pairs = (count + 1) // 2
    index = torch.arange(1, pairs + 1, dtype=torch.int64) * _GOLDEN
    h = mix64(stream[..., None] + index)
    u1 = (_shift_right(h, 32).to(torch.float64) + 0.5) * 2.0**-32
    u2 = ((h & _LOW32).to(torch.float64) + 0.5) * 2.0**-32
    radius = torch.sqrt(-2.0 * torch.log(u1))
    angle = (2.0 * math.pi) * u2
    return torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1)[..., :count]


class BrownianPath:
    """One Brownian motion W(w) per sample (module docstring), for w = 0 and w in [e^lo, e^hi].

    ``keys``: one int64 key per sample (:meth:`from_generator` draws them);
    ``shape``: the per-sample shape of W; increments come back in ``dtype`` on
    ``device``. The default range lo, hi = -46, 46 covers a noise level
    sigma~ = w^(-1/2) from 1e-10 to 1e10 when w is the signal-to-noise ratio,
    as the samplers use it.
    """

    def __init__(
        self,
        keys: Tensor,
        shape: Sequence[int],
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        depth: int = 36,
        log_range: tuple[float, float] = (-46.0, 46.0),
    ) -> None:
        keys = torch.as_tensor(keys, dtype=torch.int64).cpu().reshape(-1)
        lo, hi = log_range
        if not lo < hi or depth < 1:
            raise ValueError(f"a Brownian path needs log_range lo < hi and depth >= 1, got {log_range}, {depth}")
        self.keys, self.shape, self.dtype, self.device = keys, tuple(shape), dtype, device
        self.depth, self.lo, self.hi = depth, float(lo), float(hi)
        self.count = math.prod(self.shape)
        self._w_lo, self._w_hi = math.exp(self.lo), math.exp(self.hi)
        # W(w_lo) = sqrt(w_lo) z_a and W(w_hi) = W(w_lo) + sqrt(w_hi - w_lo) z_b: the first two rows of every query
        self._ends = counter_normals(keys, torch.tensor([-1, -2], dtype=torch.int64), self.count).reshape(2, -1)
        self._memo: dict[float, Tensor] = {}
        self._lefts: list[bool] = []
        self._rows: list[Tensor] = []

    @classmethod
    def from_generator(cls, generator: rng.GeneratorLike, like: Tensor, **options: object) -> BrownianPath:
        """Paths for the batch ``like`` (its shape, dtype, device), one key per sample drawn from ``generator``.

        With a list of generators (per-sample seeds), sample i's key comes from
        generator i alone, so its path does not depend on the rest of the batch.
        """
        keys = rng.keys(generator, like.shape[0])
        return cls(keys, like.shape[1:], dtype=like.dtype, device=like.device, **options)

    @property
    def batch(self) -> int:
        return int(self.keys.shape[0])

    def _value(self, w: float) -> Tensor:
        """W(w) in float64 on the CPU, shape (batch, count).

        Every bracket value on the way down is an affine function of the normals
        drawn so far, W = sum_k c_k z_k, so the descent runs on the scalar
        coefficients c (Python floats) and the tensors meet once, in sum_k c_k z_k. The
        normals of the top levels are kept from the previous query where both
        descend the same way (consecutive grid points share the top of the tree).
        """
        if w == 0.0:
            return torch.zeros(self.batch, self.count, dtype=torch.float64)
        if not self._w_lo <= w <= self._w_hi:
            raise ValueError(
                f"the Brownian path is defined at w = 0 and for log w in [{self.lo:g}, {self.hi:g}], got w = {w:g}; "
                "widen log_range"
            )
        if w in self._memo:
            return self._memo[w]
        u, a, b = math.log(w), self.lo, self.hi
        nodes, mids, lefts, node = [], [], [], 1
        for _ in range(self.depth):
            m = 0.5 * (a + b)
            left = u < m
            nodes.append(node)
            mids.append(m)
            lefts.append(left)
            node, a, b = (2 * node, a, m) if left else (2 * node + 1, m, b)
        shared = 0
        while shared < min(len(self._rows), len(self._lefts)) and self._lefts[shared] == lefts[shared]:
            shared += 1
        fresh = counter_normals(self.keys, torch.tensor(nodes[shared:], dtype=torch.int64), self.count)
        rows = [*self._rows[:shared], *fresh.reshape(len(nodes) - shared, -1)]
        z = [*self._ends, *rows]
        self._lefts, self._rows = lefts, rows[:_CACHED_LEVELS]
        n = 2 + self.depth
        wa, wb = self._w_lo, self._w_hi
        ca = np.zeros(n)
        ca[0] = math.sqrt(wa)
        cb = ca.copy()
        cb[1] = math.sqrt(wb - wa)
        for level, (m, left) in enumerate(zip(mids, lefts)):
            wm = math.exp(m)
            cm = ca + ((wm - wa) / (wb - wa)) * (cb - ca)
            cm[2 + level] += math.sqrt((wm - wa) * (wb - wm) / (wb - wa))
            wb, cb, wa, ca = (wm, cm, wa, ca) if left else (wb, cb, wm, cm)
        coef = (ca + ((w - wa) / (wb - wa)) * (cb - ca)).tolist()
        value = z[0] * coef[0]
        for row, c in zip(z[1:], coef[1:]):  # elementwise, row by row: no BLAS blocking that could depend on the batch
            value.add_(row, alpha=c)
        value = value.reshape(self.batch, self.count)
        if len(self._memo) >= 4:
            self._memo.pop(next(iter(self._memo)))
        self._memo[w] = value
        return value

    def _out(self, v: Tensor) -> Tensor:
        return v.reshape(self.batch, *self.shape).to(device=self.device, dtype=self.dtype)

    def __call__(self, w: float) -> Tensor:
        """W(w) for every sample, shape (batch, *shape)."""
        return self._out(self._value(float(w)))

    def increment(self, w_a: float, w_b: float) -> Tensor:
        """W(w_b) - W(w_a) for every sample (computed in float64)."""
        return self._out(self._value(float(w_b)) - self._value(float(w_a)))

    def normal(self, w_a: float, w_b: float) -> Tensor:
        """The standardized increment (W(w_b) - W(w_a)) / sqrt|w_b - w_a|: N(0, I), and the same path for any grid."""
        w_a, w_b = float(w_a), float(w_b)
        if w_a == w_b:
            raise ValueError(f"a Brownian increment needs two different times, got w = {w_a:g} twice")
        return self._out((self._value(w_b) - self._value(w_a)) / math.sqrt(abs(w_b - w_a)))
