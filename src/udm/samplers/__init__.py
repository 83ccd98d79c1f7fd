"""Samplers as pure functions and the one entry point :func:`sample`.

Each sampler is ``fn(denoiser, process, x_T, times, **options) -> x_0`` with
no state between calls and no I/O; ``SAMPLERS`` names them all and ``GRIDS``
names the time grids. The layers import one way: ``coordinates`` (the
noise-level variable) <- ``grids`` and the sampler modules <- ``run``
(``SAMPLERS``, :func:`sample`) <- ``tuning`` (:func:`optimize_grid`) <- this face.
"""

from __future__ import annotations

from .grids import GRIDS, get_grid
from .run import SAMPLERS, sample
from .tuning import optimize_grid

__all__ = ["GRIDS", "SAMPLERS", "get_grid", "optimize_grid", "sample"]
