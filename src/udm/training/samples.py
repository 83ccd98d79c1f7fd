"""One writer of generated samples, for the trainer's ``samples/step_*`` and ``udm sample``: images, points and tokens.

What a person can look at is written next to the raw tensor: an image grid
for images, a scatter beside the data for 2-D points, the decoded text for
token models of text, a grid for token images (binarized MNIST). Every file is
replaced atomically.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..atomic import write_atomic
from ..data.base import decode
from ..viz import save_image_grid, save_text_samples, scatter_plot, tokens_to_images


def save_samples(
    x: torch.Tensor,
    stem: Path,
    data: Mapping[str, Any],
    *,
    reference: torch.Tensor | None = None,
    title: str | None = None,
    meta: dict[str, str] | None = None,
    raw: bool = True,
) -> list[Path]:
    """Write samples ``x`` (N, *shape) as ``stem.png`` or ``stem.txt`` and, with ``raw``, ``stem.safetensors``.

    ``data`` is :func:`~udm.training.experiment.describe_data` of the training data (a checkpoint's
    ``meta["data"]``). ``reference`` (2-D points) is drawn beside the samples;
    ``meta`` goes into the safetensors header. Returns the paths written.
    """
    from safetensors.torch import save

    stem.parent.mkdir(parents=True, exist_ok=True)
    x = x.detach().cpu()
    written = []
    if not x.is_floating_point():
        if data.get("vocab") is not None:
            written.append(save_text_samples(stem.with_suffix(".txt"), decode(data["vocab"], x.reshape(len(x), -1), data["name"])))
        elif data.get("image_shape") is not None:
            written.append(save_image_grid(tokens_to_images(x, data["image_shape"], data["vocab_size"]), stem.with_suffix(".png")))
    elif x.ndim == 4:
        written.append(save_image_grid(x, stem.with_suffix(".png")))
    elif x.ndim == 2 and x.shape[1] == 2:
        written.append(scatter_plot(x, stem.with_suffix(".png"), reference=reference, title=title))
    if raw:
        path = stem.with_suffix(".safetensors")
        write_atomic(path, save({"samples": x.contiguous()}, metadata=meta))
        written.append(path)
    return written
