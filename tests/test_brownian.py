"""Per-sample Brownian paths (udm.brownian): the hash, the law, additivity, and independence from the batch."""

from __future__ import annotations

import math

import pytest
import torch

from udm import rng
from udm.brownian import BrownianPath, counter_normals, mix64


def _splitmix64_finalizer(x: int) -> int:
    """Reference splitmix64 finalizer on Python ints (unsigned 64-bit)."""
    m = (1 << 64) - 1
    x &= m
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & m
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & m
    return x ^ (x >> 31)


def test_mix64_is_splitmix64_with_wrapping_int64_arithmetic() -> None:
    values = [0, 1, -1, 12345678901234567, -(2**63), 2**63 - 1, 0x5DEECE66D]
    out = mix64(torch.tensor(values, dtype=torch.int64)).tolist()
    assert [o & ((1 << 64) - 1) for o in out] == [_splitmix64_finalizer(v) for v in values]


def test_counter_normals_are_standard_normal_and_uncorrelated() -> None:
    keys = rng.keys(torch.Generator().manual_seed(3), 2000)
    z = counter_normals(keys, torch.arange(1, 41), 10)  # 800k draws
    n = z.numel()
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.var()) - 1) < 5 * math.sqrt(2 / n)
    assert abs(float((z**4).mean()) - 3) < 0.05
    corr = torch.corrcoef(z.reshape(-1, 10).T) - torch.eye(10, dtype=torch.float64)
    assert float(corr.abs().max()) < 5 / math.sqrt(n / 10)
    # neighbouring keys and nodes give unrelated streams
    a, b = counter_normals(torch.arange(4000), torch.tensor([1, 2]), 1)[..., 0]
    assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 0.07


def _paths(n: int = 4000, d: int = 2, seed: int = 0) -> BrownianPath:
    return BrownianPath.from_generator(rng.generators_from_seeds(range(seed, seed + n)), torch.zeros(n, d, dtype=torch.float64))


def test_marginals_and_increments_have_the_brownian_law() -> None:
    path = _paths()
    for w in (1e-4, 0.3, 7.0, 2e5):
        assert float(path(w).var()) / w == pytest.approx(1.0, abs=0.08)
    inc = path.increment(0.5, 2.0)
    assert float(inc.var()) / 1.5 == pytest.approx(1.0, abs=0.08)
    z1, z2 = path.normal(0.5, 2.0).flatten(), path.normal(2.0, 9.0).flatten()  # disjoint intervals
    assert abs(float(torch.corrcoef(torch.stack([z1, z2]))[0, 1])) < 0.05
    # overlapping intervals: corr = sqrt(overlap / product of lengths)
    za, zb = path.normal(1.0, 3.0).flatten(), path.normal(1.0, 9.0).flatten()
    assert float(torch.corrcoef(torch.stack([za, zb]))[0, 1]) == pytest.approx(math.sqrt(2.0 / 8.0), abs=0.04)
    assert float(path(0.0).abs().max()) == 0.0


def test_increments_add_up_over_any_refinement() -> None:
    path = _paths(16, 3)
    coarse = path.increment(0.01, 400.0)
    grid = [0.01, 0.02, 0.5, 0.51, 3.0, 77.7, 400.0]
    fine = sum(path.increment(a, b) for a, b in zip(grid[:-1], grid[1:]))
    assert float((coarse - fine).abs().max()) < 1e-12


def test_a_sample_path_does_not_depend_on_the_batch() -> None:
    keys = rng.keys(rng.generators_from_seeds(range(64)), 64)
    batch = BrownianPath(keys, (5,), dtype=torch.float64)
    alone = BrownianPath(keys[17:18], (5,), dtype=torch.float64)
    for w_a, w_b in ((0.0, 0.2), (0.2, 13.0), (13.0, 1e4)):
        assert torch.equal(batch.increment(w_a, w_b)[17], alone.increment(w_a, w_b)[0])
    one = BrownianPath.from_generator(rng.generators_from_seeds([17]), torch.zeros(1, 5, dtype=torch.float64))
    assert torch.equal(one(3.0)[0], batch(3.0)[17])


def test_the_leaf_interpolation_error_is_small() -> None:
    """Depth 36 vs 48 on the same tree: the values differ by a Brownian bridge over one depth-36 leaf."""
    keys = rng.keys(torch.Generator().manual_seed(5), 500)
    coarse, fine = BrownianPath(keys, (4,), dtype=torch.float64), BrownianPath(keys, (4,), dtype=torch.float64, depth=48)
    for w in (0.0123, 1.7, 456.0):
        rel = float((coarse(w) - fine(w)).pow(2).mean().sqrt()) / math.sqrt(w)
        assert rel < 1e-4
    assert torch.equal(coarse(1.0), fine(1.0))  # w = 1 (log w = 0) is the root's midpoint: a tree point at any depth


def test_refusals() -> None:
    path = _paths(2)
    with pytest.raises(ValueError, match=r"defined at w = 0 and for log w in \[-46, 46\]"):
        path(1e30)
    with pytest.raises(ValueError, match="two different times"):
        path.normal(2.0, 2.0)
    with pytest.raises(ValueError, match="log_range lo < hi"):
        BrownianPath(torch.zeros(1, dtype=torch.int64), (1,), log_range=(1.0, 1.0))
    with pytest.raises(ValueError, match="one per sample"):
        rng.keys(rng.generators_from_seeds([1, 2]), 3)


def test_reusing_the_previous_descent_changes_no_value() -> None:
    """A path that answered other queries first gives bitwise the values of a fresh path (the bracket cache is exact)."""
    keys = rng.keys(torch.Generator().manual_seed(9), 8)
    used = BrownianPath(keys, (3,), dtype=torch.float64)
    for w in (0.5, 0.51, 3e-3, 2e4, 0.52, 7.0):
        used(w)
    for w in (0.505, 3.1e-3, 7.01, 1e-8, 9e8):
        assert torch.equal(used(w), BrownianPath(keys, (3,), dtype=torch.float64)(w))
