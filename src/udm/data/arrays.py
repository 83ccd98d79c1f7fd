"""Data sets stored as numpy ``.npy`` / ``.npz`` files (loaded with ``allow_pickle=False``, always).

An ``.npz`` archive may carry labels under ``y`` or ``labels``. Images are
uint8 (0..255, scaled to [-1, 1]) or floats already in [-1, 1], laid out
``(N, C, H, W)``, ``(N, H, W, C)`` (recognised by a last axis of 1, 3 or 4
and a second axis that is not) or ``(N, H, W)`` (one channel).
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from .base import DATASETS, KINDS, Dataset, from_uint8

X_KEYS = ("x", "images")
Y_KEYS = ("y", "labels")
_CHANNEL_SIZES = (1, 3, 4)


_READ_ERRORS = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error)


def _load(path: Path, key: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """``(x, labels or None)`` from a .npy or .npz file, with errors that name the file."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except _READ_ERRORS as err:
        raise ValueError(f"cannot read numpy file {path}: {err}") from err
    if isinstance(loaded, np.ndarray):
        if key is not None:
            raise ValueError(f"{path}: key={key!r} only applies to .npz archives, and this is a .npy array")
        return loaded, None
    with loaded as archive:
        names = list(archive.files)
        if key is None:
            candidates = names if len(names) == 1 else [k for k in X_KEYS if k in names][:1]
            if not candidates:
                raise ValueError(
                    f"{path}: cannot tell which array holds the data among {names}; pass key=NAME "
                    f"(or store it as {' or '.join(X_KEYS)})"
                )
            key = candidates[0]
        if key not in names:
            raise ValueError(f"{path}: no array {key!r}; the archive holds {names}")
        label_key = next((k for k in Y_KEYS if k in names and k != key), None)
        try:
            return archive[key], None if label_key is None else archive[label_key]
        except _READ_ERRORS as err:
            raise ValueError(f"cannot read numpy file {path}: {err}") from err


def _labels(path: Path, labels: np.ndarray, n: int) -> torch.Tensor:
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"{path}: labels must have shape ({n},) to match the data, got {labels.shape}")
    if np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels)):
        labels = labels.astype(np.int64)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: labels must be integers, got dtype {labels.dtype}")
    return torch.from_numpy(labels.astype(np.int64))


def _as_image(path: Path, x: np.ndarray) -> torch.Tensor:
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise ValueError(f"{path}: image data must be (N, C, H, W), (N, H, W, C) or (N, H, W), got shape {x.shape}")
    if x.shape[-1] in _CHANNEL_SIZES and x.shape[1] not in _CHANNEL_SIZES:
        x = x.transpose(0, 3, 1, 2)
    x = np.ascontiguousarray(x)
    if x.dtype == np.uint8:
        return from_uint8(torch.from_numpy(x))
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{path}: image arrays must be uint8 (0..255) or float in [-1, 1], got dtype {x.dtype}")
    t = torch.from_numpy(x.astype(np.float32))
    finite = t[torch.isfinite(t)]
    if finite.numel() and (float(finite.min()) < -1.0 - 1e-3 or float(finite.max()) > 1.0 + 1e-3):
        raise ValueError(
            f"{path}: float images must already lie in [-1, 1], got range [{float(finite.min()):g}, "
            f"{float(finite.max()):g}]; store them as uint8 or rescale them"
        )
    return t


@DATASETS.register("array")
def array(path: str | Path, key: str | None = None, kind: str | None = None) -> Dataset:
    """The array in a ``.npy`` file, or array ``key`` of an ``.npz`` archive, as a Dataset.

    Without ``key`` an archive's only array is used, else the one named
    ``x`` or ``images``; labels come from ``y`` or ``labels`` when present.
    ``kind`` None infers ``"image"`` for 4-D arrays and 3-D uint8 arrays and
    ``"points"`` otherwise; points keep their values (cast to float32) and a
    1-D array becomes ``(N, 1)``. ``kind="tokens"`` keeps an integer
    ``(N, L)`` array as token ids (``vocab_size`` is then ``max + 1``).
    """
    path = Path(path).expanduser()
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}")
    if not path.is_file():
        raise FileNotFoundError(f"numpy file {path} does not exist")
    x, labels = _load(path, key)
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"{path}: data must be numeric, got dtype {x.dtype}")
    if x.ndim == 0:
        raise ValueError(f"{path}: data must have a sample axis, got a scalar")
    if kind is None:
        kind = "image" if x.ndim == 4 or (x.ndim == 3 and x.dtype == np.uint8) else "points"
    if kind == "image":
        xt = _as_image(path, x)
    elif kind == "tokens":
        is_int = np.issubdtype(x.dtype, np.integer)
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64 if is_int else x.dtype))
    else:
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if xt.ndim == 1:
            xt = xt[:, None]
    y = None if labels is None else _labels(path, labels, xt.shape[0])
    return Dataset(xt, y, None, kind, path.stem)
