"""udm: unified diffusion models.

One framework (THEORY.md): a process corrupts data, x_t = F_t(x0, eps); a
network estimates x0 from x_t (the Denoiser); a reverse kernel walks back with
that estimate (the Sampler). The public API:

* :mod:`udm.processes`: the Process protocol and the Gaussian family;
* :mod:`udm.kernels`: the reverse kernels K0, K1, K2 for any process;
* :class:`udm.Denoiser` and :func:`udm.convert`: parameterizations (eps, x0, v, score, velocity, edm);
* :func:`udm.sample` with ``udm.SAMPLERS`` and ``udm.GRIDS``;
* :mod:`udm.guidance` and :mod:`udm.conditioning`: guidance; inpainting, SDEdit and posterior sampling;
* :mod:`udm.theory`: exact references (Gaussian mixtures, point masses);
* :mod:`udm.metrics`: distances between samples;
* :mod:`udm.nets`, :mod:`udm.objectives` (with :mod:`udm.losses`), :mod:`udm.data`,
  :mod:`udm.training`: networks, objectives, datasets, the experiment and the trainer (``udm.viz`` for plots,
  ``udm.cli`` for the ``udm`` command).
"""

from ._version import __version__
from . import conditioning, data, guidance, kernels, losses, metrics, nets, objectives, processes, rng, theory, training
from .denoiser import PARAMETERIZATIONS, Denoiser, Parameterization, convert, from_x0, to_x0
from .processes import NOISES, PROCESSES, GaussianProcess, LinearProcess, NotInvertible, Process, get_noise, get_process
from .samplers import GRIDS, SAMPLERS, get_grid, sample


__all__ = [
    "__version__",
    "GRIDS",
    "PARAMETERIZATIONS",
    "PROCESSES",
    "SAMPLERS",
    "Denoiser",
    "GaussianProcess",
    "LinearProcess",
    "NOISES",
    "NotInvertible",
    "Parameterization",
    "Process",
    "convert",
    "from_x0",
    "get_grid",
    "get_noise",
    "get_process",
    "conditioning",
    "data",
    "guidance",
    "kernels",
    "losses",
    "metrics",
    "nets",
    "objectives",
    "training",
    "theory",
    "processes",
    "rng",
    "sample",
    "to_x0",
]
