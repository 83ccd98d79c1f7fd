"""The user-facing errors of every layer (a leaf module: it imports nothing from udm).

Every error a user can cause derives from :class:`UdmError`; the CLI prints
it as one line ``udm: error: <what is wrong>; <what to do>`` and exits with
its ``exit_code`` (2). docs/errors.md lists the classes and exit codes.
"""

from __future__ import annotations


class UdmError(Exception):
    """A mistake the user can fix; the message says what is wrong and what to do."""

    exit_code = 2


class ConfigError(UdmError, ValueError):
    """A config key or value, a command-line flag, or a run that does not fit another is wrong."""


class CheckpointError(UdmError, ValueError):
    """A checkpoint is missing, truncated, tampered with, or does not fit the model."""


class InteropError(UdmError, ValueError):
    """A foreign model or file (diffusers folder, scheduler config, pickle) cannot be read or has no udm equivalent."""


class RunLockedError(UdmError):
    """Another live process holds the run folder."""


class DivergedError(UdmError):
    """Training produced a non-finite loss, or a model produced non-finite samples."""


class TrainingInterrupted(UdmError):
    """SIGINT or SIGTERM stopped training at a step boundary; the message names the checkpoint that is complete.

    Its ``exit_code`` is the shell's convention for a process ended by a signal,
    128 + the signal number: 130 for SIGINT (Ctrl-C), 143 for SIGTERM.
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = int(signum)
        self.exit_code = 128 + self.signum
