"""Character-level text as token windows for discrete diffusion: ``tinyshakespeare`` and any UTF-8 file.

The text is read whole, its vocabulary is the sorted set of distinct
characters (65 for Tiny Shakespeare: newline, space, ``!$&',-.3:;?`` and the
letters), every character becomes its index in that list, and the id stream
is cut, in order, into NON-overlapping windows of ``seq_len`` characters;
the last partial window is dropped. The result is a :class:`Dataset` of kind
``"tokens"`` with ``ordered=True``, so ``split(0.1)`` holds out the last 10%
of the windows, the end of the corpus, which is the usual 90/10 split of
character-level language modelling. The vocabulary is always built from the
whole file, so ids mean the same characters whatever ``limit`` is.

Tiny Shakespeare's ``input.txt`` is looked for as the data sets of
:mod:`udm.data.paths` are: ``$UDM_DATA/tinyshakespeare/input.txt`` when
``UDM_DATA`` is set, else ``../shared/data/tinyshakespeare/input.txt``
beside the repository root and then beside the current working directory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .base import DATASETS, Dataset
from .paths import DATA_ENV, data_search_dirs

TINYSHAKESPEARE_DIR = "tinyshakespeare"
TINYSHAKESPEARE_FILE = "input.txt"


def tinyshakespeare_candidates(path: str | Path | None = None) -> list[Path]:
    """The files :func:`tinyshakespeare` tries, in order: ``path`` itself, then ``input.txt`` in each search directory."""
    files = [Path(path).expanduser()] if path is not None else []
    files += [d / TINYSHAKESPEARE_FILE for d in data_search_dirs(TINYSHAKESPEARE_DIR, path)]
    return files


def find_tinyshakespeare(path: str | Path | None = None) -> Path | None:
    """The first existing Tiny Shakespeare file of :func:`tinyshakespeare_candidates`, or None."""
    return next((f for f in tinyshakespeare_candidates(path) if f.is_file()), None)


def _windows(file: Path, seq_len: int, limit: int | None, name: str) -> Dataset:
    """The ordered token windows of the UTF-8 text in ``file`` (see the module docstring)."""
    if isinstance(seq_len, bool) or int(seq_len) != seq_len or int(seq_len) < 1:
        raise ValueError(f"seq_len must be an integer >= 1, got {seq_len!r}")
    if limit is not None and int(limit) < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    seq_len = int(seq_len)
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{file} is not UTF-8 text: {err}") from err
    if len(text) < seq_len:
        raise ValueError(f"{file} holds {len(text)} characters, fewer than one window of seq_len={seq_len}")
    # code points as one array: np.unique sorts them, which is the sorted order of the characters
    codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    chars, ids = np.unique(codes, return_inverse=True)
    n = len(text) // seq_len
    if limit is not None:
        n = min(n, int(limit))
    x = torch.from_numpy(ids[: n * seq_len].astype(np.int64).reshape(n, seq_len))
    vocab = [chr(int(c)) for c in chars]
    return Dataset(x, None, None, "tokens", name, vocab=vocab, ordered=True)


@DATASETS.register("tinyshakespeare")
def tinyshakespeare(path: str | Path | None = None, seq_len: int = 64, limit: int | None = None) -> Dataset:
    """Tiny Shakespeare (1,115,394 characters, 65 distinct) as ordered windows ``(N, seq_len)`` of character ids.

    ``path`` is the ``input.txt`` file, a directory holding it, or a directory
    with ``tinyshakespeare/input.txt`` inside; by default the search of the
    module docstring. ``limit`` keeps the first ``limit`` windows. With the
    default ``seq_len=64`` there are 17,428 windows; ``split(0.1)`` gives the
    first 90% for training and the last 10% for testing.
    """
    file = find_tinyshakespeare(path)
    if file is None:
        looked = ", ".join(str(f) for f in tinyshakespeare_candidates(path))
        raise FileNotFoundError(
            f"Tiny Shakespeare ({TINYSHAKESPEARE_DIR}/{TINYSHAKESPEARE_FILE}) not found; looked for: {looked}. "
            f"Pass load_dataset('tinyshakespeare', path=FILE_OR_DIR), or set {DATA_ENV} to a directory "
            f"that contains {TINYSHAKESPEARE_DIR}/{TINYSHAKESPEARE_FILE}"
        )
    return _windows(file, seq_len, limit, "tinyshakespeare")


@DATASETS.register("text_file")
def text_file(path: str | Path, seq_len: int = 64, limit: int | None = None) -> Dataset:
    """Any UTF-8 text file as ordered windows ``(N, seq_len)`` of character ids, named after the file's stem.

    Same vocabulary, windows and ``limit`` as :func:`tinyshakespeare`; the
    file is read as it is (no newline translation), so decoding a window
    gives back exactly the characters of the file.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"text file {file} does not exist")
    return _windows(file, seq_len, limit, file.stem)
