"""Image data sets: scikit-learn's bundled 8x8 digits and folders of PNG/JPEG files.

Both return ``(N, C, H, W)`` float32 tensors in [-1, 1] (kind ``"image"``).
The digits ship inside scikit-learn, so they work offline and make the
smallest real image benchmark (1797 images of 64 pixels).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .base import DATASETS, Dataset, from_uint8

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


@DATASETS.register("digits")
def digits() -> Dataset:
    """scikit-learn's ``load_digits``: 1797 images (N, 1, 8, 8), 10 classes.

    Pixel values 0..16 map linearly to [-1, 1] (``v / 8 - 1``).
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) / 8.0 - 1.0).unsqueeze(1)
    y = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    return Dataset(x, y, 10, "image", "digits", levels=17)


def _image_files(root: Path) -> list[Path]:
    """Image files under ``root``, recursively and sorted, skipping hidden files and folders."""
    files = []
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if p.suffix.lower() in IMAGE_SUFFIXES and not any(part.startswith(".") for part in rel.parts) and p.is_file():
            files.append(p)
    return sorted(files)


def _open(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def _channels_of(im: Image.Image) -> int:
    """1 for a grayscale image mode, else 3 (RGB; alpha is dropped)."""
    return 1 if im.mode in _GRAY_MODES else 3


def _to_array(im: Image.Image, channels: int) -> np.ndarray:
    """``im`` as uint8 ``(H, W, channels)``: grayscale (mode L) for 1 channel, RGB for 3."""
    im = im.convert("L" if channels == 1 else "RGB")
    return np.asarray(im, dtype=np.uint8).reshape(im.size[1], im.size[0], channels)


def read_image(path: str | Path, channels: int | None = None) -> torch.Tensor:
    """One image file (PNG, JPEG, anything pillow reads) as ``(C, H, W)`` float32 in [-1, 1], unresized.

    The pixels map as in :func:`image_folder` (byte 0 -> -1, 255 -> +1), so a
    PNG written from a sample with :func:`~udm.data.to_uint8` reads back to
    that sample up to the byte rounding. ``channels`` is 1 (grayscale) or 3
    (RGB; alpha is dropped); None keeps the file's own: 1 for a grayscale
    mode, else 3. Used by ``udm sample --inpaint/--mask/--init``, which
    compare the result with the model's data shape instead of resizing.
    An unreadable file is a ValueError naming it.
    """
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None, got {channels}")
    im = _open(Path(path).expanduser())
    array = _to_array(im, _channels_of(im) if channels is None else channels)
    return from_uint8(torch.from_numpy(array.copy())).permute(2, 0, 1).contiguous()


def _square(im: Image.Image, size: int) -> Image.Image:
    """Center-crop to a square on the shorter side, then resize to ``size`` (box filter down, bicubic up)."""
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    im = im.crop((left, top, left + side, top + side))
    if side == size:
        return im
    resample = Image.Resampling.BOX if side > size else Image.Resampling.BICUBIC
    return im.resize((size, size), resample=resample)


@DATASETS.register("image_folder")
def image_folder(path: str | Path, size: int | None = None, channels: int | None = None) -> Dataset:
    """All .png/.jpg/.jpeg files under ``path`` (recursively) as ``(N, channels, H, W)`` in [-1, 1].

    If every image lies inside a sub-folder of ``path``, the first-level
    sub-folder names, sorted, are the class labels 0, 1, ...; otherwise there
    are no labels. ``size`` center-crops each image to a square and resizes
    it to ``size x size``; without it all images must already share one size.
    ``channels`` is 1 (grayscale) or 3 (RGB; alpha is dropped); None picks 1
    when every file is grayscale, else 3.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a directory")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None, got {channels}")
    if size is not None and int(size) < 1:
        raise ValueError(f"size must be >= 1 or None, got {size}")
    files = _image_files(root)
    if not files:
        raise ValueError(f"no .png/.jpg/.jpeg files found under {root}")
    images = [_open(f) for f in files]
    if channels is None:
        channels = 1 if all(_channels_of(im) == 1 for im in images) else 3
    arrays = []
    for f, im in zip(files, images, strict=True):
        if size is not None:
            im = _square(im.convert("L" if channels == 1 else "RGB"), int(size))
        elif im.size != images[0].size:
            raise ValueError(
                f"images under {root} have different sizes: {files[0]} is {images[0].size[0]}x{images[0].size[1]} "
                f"but {f} is {im.size[0]}x{im.size[1]}; pass size=S to resize them all to SxS"
            )
        arrays.append(_to_array(im, channels))
    x = from_uint8(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous())
    rel = [f.relative_to(root).parts for f in files]
    y, num_classes = None, None
    if all(len(parts) >= 2 for parts in rel):
        classes = sorted({parts[0] for parts in rel})
        index = {c: i for i, c in enumerate(classes)}
        y = torch.tensor([index[parts[0]] for parts in rel], dtype=torch.int64)
        num_classes = len(classes)
    return Dataset(x, y, num_classes, "image", root.name or str(root), levels=256)
