"""Two-dimensional toy distributions for checking samplers and losses by eye and by metric.

Every toy is ``toy(n=10000, seed=0, noise=...) -> Dataset`` of kind
``"points"``. Draws come from a ``torch.Generator`` seeded with ``seed`` and
never touch the global RNG, so the same seed always gives the same points and
another seed gives a fresh, independent sample of the same distribution: that
is how held-out data (``seed=1``) and the two-independent-samples floor of a
metric (``seed=1`` vs ``seed=2``) are made.

Each toy is drawn in its own native units, ``noise`` (the standard deviation
of added Gaussian noise) is in those units, and the result is then mapped by
a fixed affine map ``(x - center) / scale`` whose constants are written below
and were chosen so that each coordinate has mean about 0 and standard
deviation about 1 at the default noise. The constants never depend on the
drawn data, so two samples with different seeds live in the same coordinates.
"""

from __future__ import annotations

import math

import torch

from .base import DATASETS, Dataset

Tensor = torch.Tensor

TOYS = ("two_moons", "eight_gaussians", "checkerboard", "swiss_roll", "rings")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _check(name: str, n: int, noise: float) -> None:
    if int(n) < 1:
        raise ValueError(f"{name}: n must be >= 1, got {n}")
    if not float(noise) >= 0.0:
        raise ValueError(f"{name}: noise must be >= 0, got {noise}")


def _finish(
    name: str,
    x: Tensor,
    center: tuple[float, float],
    scale: tuple[float, float],
    y: Tensor | None = None,
    num_classes: int | None = None,
) -> Dataset:
    c = torch.tensor(center, dtype=torch.float64)
    s = torch.tensor(scale, dtype=torch.float64)
    return Dataset(((x - c) / s).to(torch.float32), y, num_classes, "points", name)


@DATASETS.register("two_moons")
def two_moons(n: int = 10000, seed: int = 0, noise: float = 0.1) -> Dataset:
    """Two interleaved half circles with labels 0 (upper moon) and 1 (lower moon).

    Native units: the upper moon is the unit half circle ``(cos t, sin t)``,
    the lower one ``(1 - cos t, 1/2 - sin t)``, ``t ~ U[0, pi]``, each sample
    on either moon with probability 1/2. Rescaled with center (0.5, 0.25) and
    per-coordinate scale (0.87, 0.50), the standard deviations at noise 0.1.
    """
    _check("two_moons", n, noise)
    g = _generator(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    t = math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    lower = y == 1
    px = torch.where(lower, 1.0 - torch.cos(t), torch.cos(t))
    py = torch.where(lower, 0.5 - torch.sin(t), torch.sin(t))
    x = torch.stack([px, py], dim=1) + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return _finish("two_moons", x, (0.5, 0.25), (0.87, 0.50), y, 2)


@DATASETS.register("eight_gaussians")
def eight_gaussians(n: int = 10000, seed: int = 0, noise: float = 0.1) -> Dataset:
    """Eight isotropic Gaussians (std ``noise``) on a ring, labelled 0..7 counter-clockwise from angle 0.

    The centers lie at radius sqrt(2), so each coordinate has variance
    ``1 + noise**2``: native units are already unit scale (scale 1, center 0).
    """
    _check("eight_gaussians", n, noise)
    g = _generator(seed)
    y = torch.randint(0, 8, (n,), generator=g)
    angle = y.to(torch.float64) * (2.0 * math.pi / 8.0)
    centers = math.sqrt(2.0) * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    x = centers + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return _finish("eight_gaussians", x, (0.0, 0.0), (1.0, 1.0), y, 8)


@DATASETS.register("checkerboard")
def checkerboard(n: int = 10000, seed: int = 0, noise: float = 0.0) -> Dataset:
    """Uniform on the 8 "black" cells of a 4 x 4 board of unit cells covering [-2, 2]^2.

    A cell (i, j), i, j in 0..3, is black when i + j is even. Each coordinate
    is uniform on [-2, 2] with standard deviation 2/sqrt(3), so the scale is
    2/sqrt(3) and the result spans [-sqrt(3), sqrt(3)]. The sharp edges make
    it a hard case for samplers; ``noise`` blurs them.
    """
    _check("checkerboard", n, noise)
    g = _generator(seed)
    i = torch.randint(0, 4, (n,), generator=g)
    j = 2 * torch.randint(0, 2, (n,), generator=g) + i % 2
    cell = torch.stack([i, j], dim=1).to(torch.float64)
    x = cell - 2.0 + torch.rand(n, 2, generator=g, dtype=torch.float64)
    x = x + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)
    scale = 2.0 / math.sqrt(3.0)
    return _finish("checkerboard", x, (0.0, 0.0), (scale, scale))


@DATASETS.register("swiss_roll")
def swiss_roll(n: int = 10000, seed: int = 0, noise: float = 0.5) -> Dataset:
    """A 2-D spiral ``(t cos t, t sin t)`` with ``t ~ U[1.5 pi, 4.5 pi]``.

    Rescaled with center (2.0, 0.2) and one scale 6.8 for both coordinates
    (their standard deviations are 6.6 and 6.9), so the spiral keeps its shape.
    """
    _check("swiss_roll", n, noise)
    g = _generator(seed)
    t = 1.5 * math.pi * (1.0 + 2.0 * torch.rand(n, generator=g, dtype=torch.float64))
    x = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1)
    x = x + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return _finish("swiss_roll", x, (2.0, 0.2), (6.8, 6.8))


@DATASETS.register("rings")
def rings(n: int = 10000, seed: int = 0, noise: float = 0.08) -> Dataset:
    """Four concentric circles of radii 1, 2, 3, 4, labelled 0..3 from the inside out.

    Each sample picks a ring with probability 1/4 and a uniform angle, so
    each coordinate has variance E[r^2]/2 = 30/8; the scale is sqrt(30/8).
    """
    _check("rings", n, noise)
    g = _generator(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    radius = (y + 1).to(torch.float64)
    angle = 2.0 * math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    x = radius[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    x = x + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)
    scale = math.sqrt(30.0 / 8.0)
    return _finish("rings", x, (0.0, 0.0), (scale, scale), y, 4)
