"""Forward processes (THEORY §3.1): the registry ``PROCESSES`` names every built-in one.

``get_process("vp")`` or ``get_process("ddpm", beta_schedule="cosine")`` builds a process;
each entry is a factory taking the schedule's keyword arguments.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from .base import (
    REQUIREMENTS,
    ELBOWeighted,
    FieldPerturbation,
    ForwardTransition,
    GaussianPath,
    KernelDensity,
    LinearPath,
    NotInvertible,
    Process,
    TokenProcess,
    TokenProcessBase,
    require,
    time_tensor,
)
from .catalog import PROCESSES
from .blur import BlurProcess
from .cold import ColdProcess, SeparableColdProcess
from .discrete import DiscreteProcess
from .edit import EditProcess
from .encoder import EncoderProcess
from .fade import FadeProcess
from .mask import MaskProcess
from .pfgm import PFGMProcess
from .pooling import PoolProcess
from .gaussian import (
    DDPMSchedule,
    EDMSchedule,
    GaussianProcess,
    HeatSchedule,
    LinearProcess,
    RectifiedFlowSchedule,
    Schedule,
    SubVPSchedule,
    VESchedule,
    VPCosineSchedule,
    VPLinearSchedule,
    VPSchedule,
    ddpm_betas,
)
from .noise import NOISES, CDFNoise, GaussianNoise, LaplaceNoise, NoiseLaw, StudentTNoise, UniformNoise, get_noise




def linear_process(schedule: Schedule, noise: str | dict | NoiseLaw | None = None, name: str | None = None) -> LinearProcess:
    """A :class:`GaussianProcess` for N(0, I) noise, else a :class:`LinearProcess` with that noise law."""
    law = get_noise(noise)
    return GaussianProcess(schedule, name) if law.is_standard_normal else LinearProcess(schedule, name, law)


def _linear_factory(schedule: type[Schedule]) -> Callable[..., Process]:
    """``schedule(**options)`` with an optional ``noise`` law, with a signature so options can be validated."""

    def build(noise: str | dict | None = None, **options) -> Process:
        return linear_process(schedule(**options), noise)

    params = list(inspect.signature(schedule).parameters.values())
    noise = inspect.Parameter("noise", inspect.Parameter.KEYWORD_ONLY, default=None)
    build.__signature__ = inspect.Signature([p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params] + [noise])
    build.__doc__ = schedule.__doc__
    return build


for _schedule in (
    DDPMSchedule, VPLinearSchedule, VPCosineSchedule, SubVPSchedule, VESchedule, EDMSchedule, RectifiedFlowSchedule, HeatSchedule
):
    PROCESSES.register(_schedule.name, _linear_factory(_schedule))


def pfgmpp(D: float = 128.0, sigma_min: float = 0.002, sigma_max: float = 80.0, clip: float | None = None) -> LinearProcess:
    """PFGM++ (THEORY §7.4) in EDM's clock: x = x0 + sigma eps, eps multivariate Student-t with D dof (r = sigma sqrt D).

    D = 1 is PFGM's gravity kernel; D -> inf is EDM. Train with the EDM loss and
    sample with Heun, exactly as EDM.
    """
    return LinearProcess(EDMSchedule(sigma_min, sigma_max), "pfgmpp", StudentTNoise(D, clip))


PROCESSES.register("pfgmpp", pfgmpp)

GREEN_KERNELS = {"gravity": {"name": "student_t", "D": 1.0}, "gaussian": None, "exp": {"name": "radial", "cdf": "exp"},
                 "tanh": {"name": "radial", "cdf": "tanh"}}


def green(kernel: str = "exp", t_min: float = 0.002, t_max: float = 80.0) -> LinearProcess:
    """A Green's-function ODE with an isotropic scale kernel psi_t(r) = Psi(r / t) (THEORY §7.1, §7.2 GF1).

    x_t = x0 + t eps with |eps| ~ Psi and a uniform direction, so f_t(x | x0) = (x - x0) / t
    and the marginal velocity is (x - E[x0 | x_t]) / t: the network estimates x0 as for
    any linear process. ``kernel``: ``gravity`` (space-time isotropic, PFGM's Cauchy
    kernel), ``gaussian`` (Part 12's heat kernel with sigma_t = t), ``exp`` (|eps| ~ Exp(1))
    or ``tanh`` (sech^2 radii). Other radial CDFs: ``get_process("edm", noise={"name": "radial", "cdf": fn})``.
    """
    if kernel not in GREEN_KERNELS:
        raise ValueError(f"unknown Green's-function kernel {kernel!r}; valid: {', '.join(GREEN_KERNELS)}")
    return linear_process(EDMSchedule(t_min, t_max), GREEN_KERNELS[kernel], name=f"green_{kernel}")


PROCESSES.register("green", green)
PROCESSES.register("pfgm", PFGMProcess)


def _blur_dct(**options) -> Process:
    return BlurProcess(form="dct", **options)


_blur_dct.__signature__ = inspect.signature(BlurProcess).replace(
    parameters=[p for p in inspect.signature(BlurProcess).parameters.values() if p.name != "form"]
)
_blur_dct.__doc__ = "Blur by the heat equation, exact in the DCT basis (THEORY §4.2; Rissanen et al. 2022)."
PROCESSES.register("blur", BlurProcess)
PROCESSES.register("blur_dct", _blur_dct)
PROCESSES.register("fade", FadeProcess)
PROCESSES.register("pool", PoolProcess)
PROCESSES.register("encoder", EncoderProcess)
PROCESSES.register("mask", MaskProcess)
PROCESSES.register("edit", EditProcess)


def get_process(name: str, **kwargs) -> Process:
    """Build the registered process ``name`` with its schedule's keyword arguments."""
    return PROCESSES.get(name)(**kwargs)


__all__ = [
    "PROCESSES",
    "BlurProcess",
    "ColdProcess",
    "DiscreteProcess",
    "EditProcess",
    "MaskProcess",
    "EncoderProcess",
    "FadeProcess",
    "PoolProcess",
    "PFGMProcess",
    "SeparableColdProcess",
    "DDPMSchedule",
    "EDMSchedule",
    "GaussianProcess",
    "HeatSchedule",
    "LinearProcess",
    "NOISES",
    "NoiseLaw",
    "CDFNoise",
    "GaussianNoise",
    "LaplaceNoise",
    "StudentTNoise",
    "UniformNoise",
    "get_noise",
    "linear_process",
    "require",
    "REQUIREMENTS",
    "LinearPath",
    "GaussianPath",
    "TokenProcess",
    "TokenProcessBase",
    "ELBOWeighted",
    "FieldPerturbation",
    "ForwardTransition",
    "KernelDensity",
    "NotInvertible",
    "Process",
    "RectifiedFlowSchedule",
    "Schedule",
    "SubVPSchedule",
    "VESchedule",
    "VPCosineSchedule",
    "VPLinearSchedule",
    "VPSchedule",
    "ddpm_betas",
    "get_process",
    "time_tensor",
]
