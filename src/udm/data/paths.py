"""Where the offline data sets live: one search rule shared by every file-backed loader.

A data set with the folder name ``NAME`` (``mnist``, ``tinyshakespeare``) is
looked for, when no ``path`` is given, in ``$UDM_DATA/NAME`` if the
environment variable ``UDM_DATA`` is set (and only there), else in
``../shared/data/NAME`` relative to the repository root and then relative to
the current working directory. A ``path`` given by the caller replaces the
search: it is tried as it is and with ``NAME`` inside it, so both
``path=".../mnist"`` and ``path=".../data"`` work. Keeping the rule in one
place means every loader's "not found" message lists the same directories
and ``UDM_DATA`` means the same thing everywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

#: the environment variable naming a directory that contains the data set folders (``mnist/``, ...)
DATA_ENV = "UDM_DATA"


def repo_root() -> Path:
    """The repository root (the directory holding ``src/``), found from this file's location."""
    return Path(__file__).resolve().parents[3]


def default_data_dir() -> Path:
    """The data root: ``$UDM_DATA`` if set, else ``../shared/data`` beside the repository root."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    return repo_root().parent / "shared" / "data"


def data_search_dirs(name: str, path: str | Path | None = None) -> list[Path]:
    """The directories to look in for the data set folder ``name``, in order, without duplicates.

    ``path`` given: ``path`` and ``path/name``. Otherwise ``$UDM_DATA/name``
    when ``UDM_DATA`` is set, else ``../shared/data/name`` beside the
    repository root and beside the current working directory.
    """
    if path is not None:
        dirs = [Path(path).expanduser(), Path(path).expanduser() / name]
    elif os.environ.get(DATA_ENV):
        dirs = [default_data_dir() / name]
    else:
        dirs = [repo_root().parent / "shared" / "data" / name, Path.cwd().parent / "shared" / "data" / name]
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique
