"""Forward processes (THEORY §3.1): the registry ``PROCESSES`` names every built-in one.

``get_process("vp")`` or ``get_process("ddpm", beta_schedule="cosine")`` builds a process;
each entry is a factory taking the schedule's keyword arguments.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from ..registry import Registry
from .base import NotInvertible, Process, time_tensor
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


def get_process(name: str, **kwargs) -> Process:
    """Build the registered process ``name`` with its schedule's keyword arguments."""
    return PROCESSES.get(name)(**kwargs)


__all__ = [
    "PROCESSES",
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
