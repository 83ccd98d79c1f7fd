"""The user-facing error of every layer (a leaf module: it imports nothing from udm).

:class:`ConfigError` is a mistake in what the user asked for (a config key, a
command-line flag, a run that does not fit another); the CLI prints it as one
line ``udm: error: ...`` with exit status 2.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the key and what is allowed."""
