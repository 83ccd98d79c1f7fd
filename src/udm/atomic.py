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
