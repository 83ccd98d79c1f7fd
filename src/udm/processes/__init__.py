"""Forward processes (THEORY §3.1): the registry ``PROCESSES`` names every built-in one.

``get_process("vp")`` or ``get_process("ddpm", beta_schedule="cosine")`` builds a process;
each entry is a factory taking the schedule's keyword arguments.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from ..registry import Registry
from .base import NotInvertible, Process, time_tensor
from .blur import BlurProcess
from .cold import ColdProcess, SeparableColdProcess
from .discrete import DiscreteProcess
from .edit import EditProcess
from .encoder import EncoderProcess
from .fade import FadeProcess
from .mask import MaskProcess
from .pooling import PoolProcess
from .gaussian import (
    DDPMSchedule,
    EDMSchedule,
    GaussianProcess,
    RectifiedFlowSchedule,
    Schedule,
    SubVPSchedule,
    VESchedule,
    VPCosineSchedule,
    VPLinearSchedule,
    VPSchedule,
    ddpm_betas,
    require_gaussian,
)

PROCESSES: Registry[Callable[..., Process]] = Registry("process")



def _gaussian_factory(schedule: type[Schedule]) -> Callable[..., Process]:
    """``GaussianProcess(schedule(**options))``, with the schedule's signature so options can be validated."""

    def build(**options) -> Process:
        return GaussianProcess(schedule(**options))

    build.__signature__ = inspect.signature(schedule)
    build.__doc__ = schedule.__doc__
    return build


for _schedule in (DDPMSchedule, VPLinearSchedule, VPCosineSchedule, SubVPSchedule, VESchedule, EDMSchedule, RectifiedFlowSchedule):
    PROCESSES.register(_schedule.name, _gaussian_factory(_schedule))


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
    "SeparableColdProcess",
    "DDPMSchedule",
    "EDMSchedule",
    "GaussianProcess",
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
    "require_gaussian",
    "get_process",
    "time_tensor",
]
