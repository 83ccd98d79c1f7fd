"""MNIST-format IDX files (MNIST, Fashion-MNIST, KMNIST): a checked reader and the ``mnist`` loader.

An IDX file is a 4-byte magic number ``00 00 TT DD`` (TT the element type,
DD the number of dimensions), DD big-endian uint32 sizes, then the elements
in C order, big-endian. MNIST images are ``00 00 08 03`` (2051: uint8, 3-D)
and labels ``00 00 08 01`` (2049: uint8, 1-D). :func:`read_idx` checks the
magic number and that the file holds exactly the bytes its header promises,
so a truncated download is reported with its file name instead of being
read as a short or garbled array. Gzipped files are recognised by their
content, not their suffix.

Where the files are looked for, in order, when no ``path`` is given: the
directory ``$UDM_DATA/mnist`` if the environment variable ``UDM_DATA`` is set
(and only there), else ``../shared/data/mnist`` relative to the repository
root and then relative to the current working directory.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from .base import DATASETS, Dataset, from_uint8

#: IDX element type code -> numpy dtype (big-endian where it matters)
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
MAGIC_IMAGES = 0x00000803
MAGIC_LABELS = 0x00000801
SPLITS = {"train": "train", "test": "t10k"}

#: the environment variable naming a directory that contains ``mnist/``
DATA_ENV = "UDM_DATA"


def _raw_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped if they start with the gzip signature."""
    data = path.read_bytes()
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: corrupt or truncated gzip file ({err}); download it again") from err


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (raw or gzipped) into a native-endian numpy array of the shape in its header.

    Raises ValueError naming the file when the magic number is not an IDX
    one or the file is shorter or longer than its header says.
    """
    path = Path(path)
    data = _raw_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path}: {len(data)} bytes is too short for an IDX header; the file is truncated")
    if data[0] != 0 or data[1] != 0 or data[2] not in IDX_TYPES or data[3] == 0:
        raise ValueError(
            f"{path}: bad IDX magic number 0x{data[:4].hex()}; expected 00 00 <type> <ndim> "
            f"(0x00000803 for images, 0x00000801 for labels); is this an MNIST-format file?"
        )
    dtype, ndim = IDX_TYPES[data[2]], data[3]
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise ValueError(f"{path}: header needs {offset} bytes for {ndim} dimensions but the file has {len(data)}; truncated")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = offset + math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        problem = "is truncated" if len(data) < expected else "has trailing bytes"
        raise ValueError(
            f"{path} {problem}: its header says shape {dims} of {dtype.name} ({expected} bytes in all), "
            f"but it holds {len(data)} bytes (after gunzip)"
        )
    array = np.frombuffer(data, dtype=dtype, offset=offset).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=False)


def _magic(array: np.ndarray) -> int:
    codes = {v.newbyteorder("="): k for k, v in IDX_TYPES.items()}
    return (codes[array.dtype] << 8) | array.ndim


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


def default_data_dir() -> Path:
    """The data root: ``$UDM_DATA`` if set, else ``../shared/data`` beside the repository root."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    return _repo_root().parent / "shared" / "data"


def mnist_search_dirs(path: str | Path | None = None) -> list[Path]:
    """The directories :func:`find_mnist` looks in, in order (see the module docstring)."""
    if path is not None:
        dirs = [Path(path).expanduser(), Path(path).expanduser() / "mnist"]
    elif os.environ.get(DATA_ENV):
        dirs = [default_data_dir() / "mnist"]
    else:
        dirs = [_repo_root().parent / "shared" / "data" / "mnist", Path.cwd().parent / "shared" / "data" / "mnist"]
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def mnist_files(directory: str | Path, split: str = "train") -> tuple[Path, Path] | None:
    """``(images, labels)`` files for ``split`` in ``directory``, or None if either is missing.

    Accepts ``train-images-idx3-ubyte`` and ``train-images.idx3-ubyte``, each
    optionally with ``.gz`` (and ``t10k-`` for the test split).
    """
    if split not in SPLITS:
        raise ValueError(f"MNIST split must be one of {sorted(SPLITS)}, got {split!r}")
    directory = Path(directory)
    found = []
    for part in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        stem, sep, rest = part.partition("-idx")
        names = [f"{SPLITS[split]}-{part}", f"{SPLITS[split]}-{stem}.idx{rest}"]
        hits = [directory / (n + gz) for n in names for gz in ("", ".gz") if (directory / (n + gz)).is_file()]
        if not hits:
            return None
        found.append(hits[0])
    return found[0], found[1]


def find_mnist(path: str | Path | None = None, split: str = "train") -> Path | None:
    """The first directory holding the MNIST-format files of ``split``, or None if there is none."""
    for directory in mnist_search_dirs(path):
        if mnist_files(directory, split) is not None:
            return directory
    return None


@DATASETS.register("mnist")
def mnist(path: str | Path | None = None, split: str = "train", limit: int | None = None) -> Dataset:
    """MNIST-format digits (or Fashion-MNIST, same file names) as ``(N, 1, 28, 28)`` in [-1, 1], 10 classes.

    ``path`` is a directory holding ``train-images-idx3-ubyte[.gz]``,
    ``train-labels-idx1-ubyte[.gz]``, ``t10k-...`` (or a directory with such
    an ``mnist/`` inside); by default the search of the module docstring.
    ``limit`` keeps the first ``limit`` samples of the split.
    """
    if split not in SPLITS:
        raise ValueError(f"MNIST split must be one of {sorted(SPLITS)}, got {split!r}")
    if limit is not None and int(limit) < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    directory = find_mnist(path, split)
    if directory is None:
        looked = ", ".join(str(d) for d in mnist_search_dirs(path))
        prefix = SPLITS[split]
        raise FileNotFoundError(
            f"MNIST {split} files ({prefix}-images-idx3-ubyte[.gz] and {prefix}-labels-idx1-ubyte[.gz]) not found; "
            f"looked in: {looked}. Pass load_dataset('mnist', path=DIR) with DIR holding those files, "
            f"or set {DATA_ENV} to a directory that contains mnist/"
        )
    image_file, label_file = mnist_files(directory, split)
    images, labels = read_idx(image_file), read_idx(label_file)
    if _magic(images) != MAGIC_IMAGES:
        raise ValueError(f"{image_file}: expected uint8 images with magic 0x00000803, got 0x{_magic(images):08x}")
    if _magic(labels) != MAGIC_LABELS:
        raise ValueError(f"{label_file}: expected uint8 labels with magic 0x00000801, got 0x{_magic(labels):08x}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{image_file} holds {images.shape[0]} images but {label_file} holds {labels.shape[0]} labels"
        )
    if labels.size and int(labels.max()) > 9:
        raise ValueError(f"{label_file}: labels must be 0..9, found {int(labels.max())}")
    if limit is not None:
        images, labels = images[: int(limit)], labels[: int(limit)]
    x = from_uint8(torch.from_numpy(images.copy())).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return Dataset(x, y, 10, "image", f"mnist-{split}")
