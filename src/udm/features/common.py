"""What every feature network shares: the 8-bit quantization of its input, and files read only after their hash is checked.

Quantization is the first step of every network's input transform, so a
metric computed on samples equals the metric computed on the PNG files those
samples are saved as: :func:`quantize` is :func:`udm.data.to_uint8`, the
function :func:`udm.viz.save_image_grid` writes pixels with
(``round((x + 1) * 127.5)`` clamped to 0..255). A uint8 tensor (pixels read
from image files) is taken as it is.

A weights file is hashed (SHA-256) before anything reads it: a file that was
truncated, replaced or retrained without updating the pin in the code is
refused with one line naming the file, both hashes and what to do, instead of
silently giving other numbers under the same network name.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ..data import to_uint8
from ..errors import CheckpointError

Tensor = torch.Tensor
#: where the networks udm trains ship (package data, see pyproject.toml)
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def quantize(x: Tensor) -> Tensor:
    """``x`` (images in [-1, 1]) as the bytes a saved PNG holds: uint8 ``round((clamp(x) + 1) * 127.5)``; uint8 passes through."""
    return x if x.dtype == torch.uint8 else to_uint8(x)


def sha256_file(path: str | Path) -> str:
    """The SHA-256 hex digest of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str, network: str, remedy: str) -> None:
    """Raise a one-line :class:`CheckpointError` unless the file at ``path`` hashes to ``expected``.

    ``remedy`` finishes the message: how to get the right file back.
    """
    found = sha256_file(path)
    if found != expected:
        raise CheckpointError(
            f"weights of feature network {network!r} at {path} have SHA-256 {found}, expected {expected}; "
            f"the file is damaged or was replaced: {remedy}"
        )
