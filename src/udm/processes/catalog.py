"""The registry of processes, ``PROCESSES``, in a leaf module.

The package face (:mod:`udm.processes`) fills it with every built-in process;
it lives here so that a process can build another by name (the encoder model's
inner Gaussian process, THEORY §4.5) without importing the package face, which
imports every process module.
"""

from __future__ import annotations

from collections.abc import Callable

from ..registry import Registry
from .base import Process

PROCESSES: Registry[Callable[..., Process]] = Registry("process")
