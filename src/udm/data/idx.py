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
root and then relative to the current working directory (the rule of
:mod:`udm.data.paths`, shared with the text loaders).

``binary_mnist`` reads the same files as token data for discrete diffusion:
each pixel becomes a 0/1 token after an optional average-pool resize.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from .base import DATASETS, Dataset, from_uint8
from .paths import DATA_ENV, data_search_dirs

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


def mnist_search_dirs(path: str | Path | None = None) -> list[Path]:
    """The directories :func:`find_mnist` looks in, in order (see the module docstring)."""
    return data_search_dirs("mnist", path)


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


def _read_mnist(path: str | Path | None, split: str, limit: int | None, loader: str) -> tuple[np.ndarray, np.ndarray]:
    """Checked ``(images (N, H, W) uint8, labels (N,) uint8)`` of ``split``, the first ``limit`` of them.

    ``loader`` is the registered name the caller was loaded under, so the
    "not found" message tells the user the call that would fix it.
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
            f"looked in: {looked}. Pass load_dataset({loader!r}, path=DIR) with DIR holding those files, "
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
    return images, labels


@DATASETS.register("mnist")
def mnist(path: str | Path | None = None, split: str = "train", limit: int | None = None) -> Dataset:
    """MNIST-format digits (or Fashion-MNIST, same file names) as ``(N, 1, 28, 28)`` in [-1, 1], 10 classes.

    ``path`` is a directory holding ``train-images-idx3-ubyte[.gz]``,
    ``train-labels-idx1-ubyte[.gz]``, ``t10k-...`` (or a directory with such
    an ``mnist/`` inside); by default the search of the module docstring.
    ``limit`` keeps the first ``limit`` samples of the split.
    """
    images, labels = _read_mnist(path, split, limit, "mnist")
    x = from_uint8(torch.from_numpy(images.copy())).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return Dataset(x, y, 10, "image", f"mnist-{split}", levels=256)


@DATASETS.register("binary_mnist")
def binary_mnist(
    path: str | Path | None = None,
    split: str = "train",
    limit: int | None = None,
    size: int = 28,
    threshold: float = 0.5,
) -> Dataset:
    """MNIST as binary tokens for discrete diffusion: ``(N, size * size)`` ids in {0, 1}, 10 classes.

    Pixels are scaled to [0, 1] (byte / 255), average-pooled over
    non-overlapping ``k x k`` blocks with ``k = 28 // size`` (so ``size``
    must divide 28: 28, 14, 7, 4, 2 or 1), and a pixel becomes token 1 (ink)
    where its value is strictly above ``threshold`` and 0 otherwise. Rows are
    the images in row-major order; ``image_shape`` is ``(1, size, size)`` so
    :func:`udm.viz.tokens_to_images` can draw them. ``path``, ``split`` and
    ``limit`` are those of :func:`mnist`, and so is the error for missing files.
    """
    if not 0.0 <= float(threshold) < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    images, labels = _read_mnist(path, split, limit, "binary_mnist")
    n, height, width = images.shape
    if height != width:
        raise ValueError(f"binary_mnist needs square images, got {height}x{width}")
    divisors = [d for d in range(height, 0, -1) if height % d == 0]
    if isinstance(size, bool) or int(size) != size or int(size) not in divisors:
        raise ValueError(
            f"size must divide the image side {height} (one of {', '.join(map(str, divisors))}) "
            f"so that average pooling uses whole blocks, got {size}"
        )
    size = int(size)
    k = height // size
    pixels = images.astype(np.float32) / 255.0
    if k > 1:
        pixels = pixels.reshape(n, size, k, size, k).mean(axis=(2, 4))
    tokens = torch.from_numpy((pixels > float(threshold)).reshape(n, size * size).astype(np.int64))
    y = torch.from_numpy(labels.astype(np.int64))
    return Dataset(tokens, y, 10, "tokens", f"binary_mnist-{split}", vocab_size=2, image_shape=(1, size, size))
