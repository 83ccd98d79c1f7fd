"""Atomic file writes: a file is either the old one or the complete new one, never half-written.

Every writer in udm (checkpoints' ``state.json`` and ``latest`` pointer,
samples, logs, configs, pictures) goes through here. The data is written to a
uniquely named temporary file in the target directory, flushed and synced to
disk, and renamed onto the target with ``os.replace`` (atomic on POSIX and
Windows within one file system); on any error the temporary file is removed
and the target is left as it was. Missing parent directories are created.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from .errors import ConfigError

#: permissions of a finished file (temporary files are created private, 0o600)
FILE_MODE = 0o644


@contextmanager
def atomic_open(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """A binary file to write ``path``'s new content into; it replaces ``path`` only when the block exits cleanly.

    For writers that take a file object, e.g. ``PIL.Image.save(f, format=...)``
    or ``Figure.savefig(f, format=...)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically (see the module docstring) and return it as a ``Path``."""
    with atomic_open(path) as f:
        f.write(data)
    return Path(path)


def check_writable(path: str | os.PathLike[str], what: str, *, folder: bool) -> Path:
    """Refuse, before anything is written, an output ``path`` that cannot be created; return it as a ``Path``.

    ``folder`` says whether ``path`` is an output folder (it may exist as a
    folder) or an output file (it may exist as a file). The nearest existing
    ancestor must be a folder this process may write into; a read-only file
    system is refused the same way.
    """
    path = Path(path)
    if path.exists():
        if folder and not path.is_dir():
            raise ConfigError(f"{what} {path} is a file, not a folder; choose a folder path")
        if not folder and path.is_dir():
            raise ConfigError(f"{what} {path} is a folder; give a file path")
        if not os.access(path if folder else path.parent, os.W_OK):
            raise ConfigError(f"{what} {path} is not writable; choose another path or fix its permissions")
        return path
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{what} {path} lies under {parent}, which is a file; choose another path")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"{what} {path} cannot be created: {parent} is not writable (read-only folder or file system); choose another path")
    return path
