"""Random numbers that do not depend on batch size or device.

A sampler draws its noise through :func:`randn`. Given a list of generators
(one per sample, e.g. from :func:`generators_from_seeds`), sample ``i`` gets
its noise from generator ``i`` alone, so the same seed yields the same sample
whether it is drawn alone or inside a batch of 64 (issue: per-sample seeds).
Draws are made on the CPU in float64 and then moved, so CPU and GPU runs see
the same numbers. The one exception is a single generator that lives on an
accelerator (training draws its noise there): it draws in place, at full speed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

GeneratorLike = torch.Generator | int | Sequence[torch.Generator | int] | None


def generators_from_seeds(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per seed: the per-sample seeding used by samplers."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def as_generator(generator: GeneratorLike) -> torch.Generator | list[torch.Generator] | None:
    """Normalize ``None | int | Generator | list of those`` to generators."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int):
        return torch.Generator().manual_seed(generator)
    return [g if isinstance(g, torch.Generator) else torch.Generator().manual_seed(int(g)) for g in generator]


def _draw(
    draw: Callable[..., torch.Tensor],
    shape: Sequence[int],
    generator: GeneratorLike,
    dtype: torch.dtype,
    device: torch.device | str | None,
) -> torch.Tensor:
    """Draw in float64 on the CPU with ``draw`` (torch.randn or torch.rand); row i from generator i if a list."""
    gen = as_generator(generator)
    shape = tuple(shape)
    if isinstance(gen, torch.Generator) and gen.device.type != "cpu":
        return draw(shape, generator=gen, dtype=dtype, device=gen.device)
    if isinstance(gen, list):
        if len(gen) != shape[0]:
            raise ValueError(f"got {len(gen)} per-sample generators for a batch of {shape[0]}; give one per sample")
        rows = [draw(shape[1:], generator=g, dtype=torch.float64) for g in gen]
        out = torch.stack(rows) if rows else torch.empty(shape, dtype=torch.float64)
    else:
        out = draw(shape, generator=gen, dtype=torch.float64)
    return out.to(device=device, dtype=dtype)


def randn(
    shape: Sequence[int],
    generator: GeneratorLike = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Standard normal draws of ``shape``; with a list of generators, row ``i`` uses generator ``i``."""
    return _draw(torch.randn, shape, generator, dtype, device)


def randn_like(x: torch.Tensor, generator: GeneratorLike = None) -> torch.Tensor:
    """:func:`randn` with the shape, dtype and device of ``x``."""
    return randn(x.shape, generator, dtype=x.dtype, device=x.device)


def rand(
    shape: Sequence[int],
    generator: GeneratorLike = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Uniform [0, 1) draws of ``shape``, with the same per-sample generator rule as :func:`randn`."""
    return _draw(torch.rand, shape, generator, dtype, device)


def keys(generator: GeneratorLike, n: int) -> torch.Tensor:
    """``n`` int64 keys (CPU), e.g. for :class:`udm.brownian.BrownianPath`; key i from generator i if a list."""
    gen = as_generator(generator)

    def draw(g: torch.Generator | None, size: tuple[int, ...]) -> torch.Tensor:
        device = g.device if g is not None else "cpu"
        return torch.randint(-(2**63), 2**63 - 1, size, generator=g, dtype=torch.int64, device=device).cpu()

    if isinstance(gen, list):
        if len(gen) != n:
            raise ValueError(f"got {len(gen)} per-sample generators for a batch of {n}; give one per sample")
        return torch.cat([draw(g, (1,)) for g in gen]) if gen else torch.empty(0, dtype=torch.int64)
    return draw(gen, (n,))
