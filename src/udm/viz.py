"""Pictures of data, samples and training: image grids, 2-D scatter and trajectory plots, loss curves, text.

Image grids are drawn with PIL alone, pixel for pixel, so they can be checked
in tests and written from a training loop without a plotting stack. Plots use
matplotlib's object API (``matplotlib.figure.Figure`` bound to an Agg canvas)
and never pyplot, so no global figure registry or backend switch is touched
and plotting from a headless job or a thread is safe; matplotlib is imported
on first use only.

Every writer goes through :mod:`udm.atomic` (missing parent directories are
created, the file is written beside the target and ``os.replace``-d into
place), so an interrupted run never leaves a half-written picture, and returns
the final ``Path``. The
format follows the suffix (``.png`` unless the suffix names another format
PIL or matplotlib can write).

Token data (kind ``"tokens"``) is drawn through :func:`tokens_to_images`,
which turns ids into the [-1, 1] images the grid writers take, and text
samples are written with :func:`save_text_samples`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from .atomic import atomic_open, write_atomic
from .data.base import to_uint8

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Tensor = torch.Tensor
PathLike = str | os.PathLike[str]
ArrayLike = Tensor | np.ndarray | Sequence[float]
Limits = float | tuple[float, float] | None

#: automatic upscaling makes each tile at least this many pixels on its longer side
MIN_TILE_PIXELS = 24
#: scatter plots draw at most this many points per panel (a fixed random subset beyond)
MAX_SCATTER_POINTS = 20000


def _pil_format(path: PathLike) -> str:
    suffix = Path(path).suffix.lower() or ".png"
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None:
        raise ValueError(f"cannot write an image to {path}: unknown suffix {suffix!r}; use .png")
    return fmt


def _as_tensor(name: str, x: Tensor | np.ndarray | Sequence[Any]) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach().cpu()
    if isinstance(x, (list, tuple)) and x and isinstance(x[0], Tensor):
        return torch.stack([t.detach().cpu() for t in x])
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a tensor or array, got {type(x).__name__}") from err


def _check_images(name: str, x: Tensor) -> None:
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] < 1 or x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"{name} must have shape (N, C, H, W) with N >= 1 and C in (1, 3), got {tuple(x.shape)}")


def _grid_columns(n: int, nrow: int | None) -> int:
    if nrow is None:
        return math.ceil(math.sqrt(n))
    if int(nrow) < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    return min(int(nrow), n)


def image_grid(
    x: Tensor | np.ndarray,
    nrow: int | None = None,
    padding: int = 1,
    scale: int = 1,
    pad_value: float = 0.0,
) -> np.ndarray:
    """Tile images ``x`` (N, C, H, W) in [-1, 1] into one uint8 array (height, width, C).

    ``nrow`` images per row (the torchvision convention; default
    ceil(sqrt(N)), at most N), ``padding`` pixels between tiles and around the
    border, filled with ``pad_value`` (in [-1, 1]; 0 is mid-gray, visible
    against black and white digits alike). Each tile is upscaled by the
    integer ``scale`` with nearest-neighbour repetition, so the result is
    ``rows * (H * scale + padding) + padding`` by
    ``cols * (W * scale + padding) + padding``. Values are clamped to [-1, 1]
    and NaN shows as black, so a diverged sample is visible rather than fatal.
    A uint8 ``x`` is taken as bytes 0..255 as they are.
    """
    x = _as_tensor("x", x)
    _check_images("x", x)
    if int(padding) < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if int(scale) < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale}")
    padding, scale = int(padding), int(scale)
    tiles = (x if x.dtype == torch.uint8 else to_uint8(x)).permute(0, 2, 3, 1).numpy()
    if scale > 1:
        tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w, c = tiles.shape
    cols = _grid_columns(n, nrow)
    rows = math.ceil(n / cols)
    fill = int(to_uint8(torch.tensor(float(pad_value))))
    grid = np.full((rows * (h + padding) + padding, cols * (w + padding) + padding, c), fill, dtype=np.uint8)
    for i in range(n):
        top = padding + (i // cols) * (h + padding)
        left = padding + (i % cols) * (w + padding)
        grid[top : top + h, left : left + w] = tiles[i]
    return grid


def auto_scale(height: int, width: int) -> int:
    """The integer upscaling that makes a ``height x width`` tile at least ``MIN_TILE_PIXELS`` on its longer side."""
    return max(1, math.ceil(MIN_TILE_PIXELS / max(int(height), int(width), 1)))


def save_image_grid(
    x: Tensor | np.ndarray,
    path: PathLike,
    nrow: int | None = None,
    padding: int = 1,
    scale: int | None = None,
    pad_value: float = 0.0,
) -> Path:
    """Write :func:`image_grid` of ``x`` (N, C, H, W) in [-1, 1] to ``path`` (PNG) and return the path.

    ``scale`` None picks :func:`auto_scale`: 8x8 digits become 24x24 tiles,
    28x28 MNIST stays as it is.
    """
    x = _as_tensor("x", x)
    _check_images("x", x)
    if scale is None:
        scale = auto_scale(x.shape[2], x.shape[3])
    grid = image_grid(x, nrow=nrow, padding=padding, scale=scale, pad_value=pad_value)
    image = Image.fromarray(grid[:, :, 0] if grid.shape[2] == 1 else grid)
    fmt = _pil_format(path)
    with atomic_open(path) as f:
        image.save(f, format=fmt)
    return Path(path)


def tokens_to_images(x: Tensor | np.ndarray, image_shape: Sequence[int], vocab_size: int) -> Tensor:
    """Token ids ``x`` (N, L) in ``[0, vocab_size)`` as float32 images (N, *image_shape) in [-1, 1].

    Id ``k`` maps linearly to ``2 k / (vocab_size - 1) - 1``, so binary
    tokens become -1 (black) and +1 (white) and :func:`save_image_grid` draws
    them like any image; a vocabulary of one maps to -1. ``x`` may also be
    already shaped ``(N, *image_shape)``. Ids outside the vocabulary, such as
    an absorbing mask token left by a sampler, are a ValueError: replace them
    before drawing.
    """
    ids = _as_tensor("x", x)
    shape = tuple(int(d) for d in image_shape)
    if not shape or min(shape) < 1:
        raise ValueError(f"image_shape must be positive integers, got {tuple(image_shape)}")
    if int(vocab_size) < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"token ids must be an integer tensor, got {ids.dtype}")
    if ids.ndim < 2 or ids.shape[0] < 1 or math.prod(ids.shape[1:]) != math.prod(shape):
        raise ValueError(
            f"x must have shape (N, L) with L = {math.prod(shape)} tokens per image_shape {shape}, got {tuple(ids.shape)}"
        )
    out = (ids < 0) | (ids >= int(vocab_size))
    if bool(out.any()):
        raise ValueError(
            f"{int(out.sum())} token id(s) outside [0, {int(vocab_size)}), e.g. {int(ids[out][0])}; "
            "replace mask or padding ids before drawing"
        )
    scale = 2.0 / max(int(vocab_size) - 1, 1)
    return (ids.to(torch.float32) * scale - 1.0).reshape(ids.shape[0], *shape)


def save_text_samples(path: PathLike, texts: str | Sequence[str]) -> Path:
    """Write text samples to ``path`` as UTF-8, each under a ``--- sample i ---`` header line, and return the path.

    Samples (e.g. :meth:`udm.data.Dataset.decode` of generated tokens) may
    themselves span lines, so the headers mark where each one starts; a
    single string counts as one sample. The file is replaced atomically like
    every other writer here.
    """
    samples = [texts] if isinstance(texts, str) else list(texts)
    for i, text in enumerate(samples):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
    body = "".join(f"--- sample {i} ---\n{text}\n\n" for i, text in enumerate(samples))
    data = body.encode("utf-8")
    return write_atomic(path, data)


def trajectory_grid(
    trajectory: Tensor | Sequence[Tensor],
    path: PathLike,
    n_samples: int = 8,
    n_steps: int = 10,
    padding: int = 1,
    scale: int | None = None,
) -> Path:
    """Write an image trajectory (T, N, C, H, W), noise at index 0 and data last, as a grid.

    Rows are the first ``n_samples`` samples; columns are ``n_steps`` time
    indices evenly spaced from the first to the last (both always shown).
    Values outside [-1, 1] (early, noisy steps) are clamped.
    """
    traj = _as_tensor("trajectory", trajectory)
    if traj.ndim != 5 or traj.shape[0] < 1:
        raise ValueError(f"an image trajectory must have shape (T, N, C, H, W), got {tuple(traj.shape)}")
    if int(n_samples) < 1 or int(n_steps) < 1:
        raise ValueError(f"n_samples and n_steps must be >= 1, got {n_samples} and {n_steps}")
    t_count, n = traj.shape[0], traj.shape[1]
    steps = np.unique(np.round(np.linspace(0, t_count - 1, min(int(n_steps), t_count))).astype(np.int64))
    k = min(int(n_samples), n)
    tiles = traj[torch.from_numpy(steps), :k].transpose(0, 1).reshape(k * len(steps), *traj.shape[2:])
    return save_image_grid(tiles, path, nrow=len(steps), padding=padding, scale=scale)


def _points(name: str, x: ArrayLike | None) -> np.ndarray | None:
    if x is None:
        return None
    arr = _as_tensor(name, x).to(torch.float64).numpy()
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] < 1:
        raise ValueError(f"{name} must have shape (N, 2) with N >= 1, got {tuple(arr.shape)}")
    return arr


def _limits(lim: Limits, *clouds: np.ndarray | None) -> tuple[float, float]:
    """Axis limits: ``lim`` as given, else a symmetric box around 99.9% of every finite coordinate."""
    if lim is not None:
        if isinstance(lim, (int, float)):
            if not lim > 0:
                raise ValueError(f"lim must be > 0 or a (low, high) pair, got {lim}")
            return -float(lim), float(lim)
        lo, hi = (float(v) for v in lim)
        if not lo < hi:
            raise ValueError(f"lim must be a (low, high) pair with low < high, got {lim}")
        return lo, hi
    values = np.concatenate([np.abs(c).ravel() for c in clouds if c is not None])
    values = values[np.isfinite(values)]
    bound = float(np.quantile(values, 0.999)) * 1.1 if values.size else 1.0
    bound = bound if bound > 0 else 1.0
    return -bound, bound


def _subsample(x: np.ndarray, limit: int) -> np.ndarray:
    if x.shape[0] <= limit:
        return x
    keep = np.random.default_rng(0).choice(x.shape[0], size=limit, replace=False)
    return x[np.sort(keep)]


def _figure(panels: int, title: str | None, width: float = 4.0) -> tuple[Figure, list[Axes]]:
    """A figure bound to an Agg canvas with ``panels`` axes, ``width`` inches each, side by side."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * panels, 4.3 if title else 4.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, panels, i + 1) for i in range(panels)]
    if title:
        fig.suptitle(title)
    return fig, axes


def _save_figure(fig: Figure, path: PathLike) -> Path:
    suffix = Path(path).suffix.lower().lstrip(".") or "png"
    supported = fig.canvas.get_supported_filetypes()
    if suffix not in supported:
        raise ValueError(f"cannot write a plot to {path}: unknown suffix {suffix!r}; use one of {sorted(supported)}")
    with atomic_open(path) as f:
        fig.savefig(f, format=suffix)
    return Path(path)


def _scatter(ax: Axes, x: np.ndarray, label: str, lim: tuple[float, float], **style: Any) -> None:
    lo, hi = lim
    finite = np.isfinite(x).all(axis=1)
    outside = int((~finite | (x < lo).any(axis=1) | (x > hi).any(axis=1)).sum())
    shown = _subsample(x[finite], MAX_SCATTER_POINTS)
    size = float(np.clip(4000.0 / max(len(shown), 1), 0.5, 12.0))
    ax.scatter(shown[:, 0], shown[:, 1], s=size, linewidths=0, rasterized=True, **style)
    note = f", {outside} outside view" if outside else ""
    ax.set_title(f"{label} (n={x.shape[0]}{note})", fontsize=10)


def _square_axes(ax: Axes, lim: tuple[float, float]) -> None:
    ax.set_xlim(*lim)
    ax.set_ylim(*lim)
    ax.set_aspect("equal")


def scatter_plot(
    samples: ArrayLike,
    path: PathLike,
    reference: ArrayLike | None = None,
    title: str | None = None,
    lim: Limits = None,
) -> Path:
    """Scatter 2-D ``samples`` (N, 2); with ``reference`` data, two panels "data | samples" on the same axes.

    ``lim`` is a half-width (square box ``[-lim, lim]^2``) or a ``(low, high)``
    pair for both axes; by default a symmetric box holding 99.9% of all
    coordinates. Each panel's title counts the points outside the box
    (non-finite ones included), so a diverging sampler is not hidden by the
    axis limits. At most ``MAX_SCATTER_POINTS`` points per panel are drawn.
    """
    pts = _points("samples", samples)
    ref = _points("reference", reference)
    box = _limits(lim, pts, ref)
    fig, axes = _figure(1 if ref is None else 2, title)
    if ref is not None:
        _scatter(axes[0], ref, "data", box, color="0.35")
    _scatter(axes[-1], pts, "samples", box, color="C0")
    for ax in axes:
        _square_axes(ax, box)
    return _save_figure(fig, path)


def trajectory_plot(
    trajectory: Tensor | Sequence[Tensor],
    path: PathLike,
    n_paths: int | None = None,
    reference: ArrayLike | None = None,
    title: str | None = None,
    lim: Limits = None,
) -> Path:
    """Draw sampling paths from noise (index 0) to data (last index) and return the path.

    For 2-D points (T, N, 2): ``n_paths`` (default 64) evenly chosen samples
    are drawn as lines, their starting noise as gray circles and their end
    points as red dots, over ``reference`` data in light gray if given;
    ``lim`` as in :func:`scatter_plot`. For images (T, N, C, H, W) this is
    :func:`trajectory_grid` with ``n_paths`` (default 8) rows.
    """
    traj = _as_tensor("trajectory", trajectory)
    if traj.ndim == 5:
        return trajectory_grid(traj, path, n_samples=8 if n_paths is None else n_paths)
    if traj.ndim != 3 or traj.shape[2] != 2 or traj.shape[0] < 1 or traj.shape[1] < 1:
        raise ValueError(
            f"trajectory must have shape (T, N, 2) for points or (T, N, C, H, W) for images, got {tuple(traj.shape)}"
        )
    k = 64 if n_paths is None else int(n_paths)
    if k < 1:
        raise ValueError(f"n_paths must be >= 1, got {n_paths}")
    arr = traj.to(torch.float64).numpy()
    chosen = np.unique(np.round(np.linspace(0, arr.shape[1] - 1, min(k, arr.shape[1]))).astype(np.int64))
    paths = arr[:, chosen].transpose(1, 0, 2)
    ref = _points("reference", reference)
    box = _limits(lim, paths.reshape(-1, 2), ref)

    from matplotlib.collections import LineCollection

    fig, (ax,) = _figure(1, title)
    if ref is not None:
        shown = _subsample(ref[np.isfinite(ref).all(axis=1)], MAX_SCATTER_POINTS)
        ax.scatter(shown[:, 0], shown[:, 1], s=1.0, color="0.8", linewidths=0, rasterized=True, label="data")
    ax.add_collection(LineCollection(list(paths), colors="C0", linewidths=0.7, alpha=0.6))
    ax.scatter(paths[:, 0, 0], paths[:, 0, 1], s=10, color="0.4", zorder=3, label="start (noise)")
    ax.scatter(paths[:, -1, 0], paths[:, -1, 1], s=10, color="C3", zorder=3, label="end (sample)")
    ax.set_title(f"{len(chosen)} of {arr.shape[1]} paths, {arr.shape[0]} states", fontsize=10)
    ax.legend(loc="upper right", fontsize=8, markerscale=1.5)
    _square_axes(ax, box)
    return _save_figure(fig, path)


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` finite values (fewer at the start); NaN where none are finite."""
    finite = np.isfinite(values)
    csum = np.concatenate([[0.0], np.cumsum(np.where(finite, values, 0.0))])
    ccount = np.concatenate([[0], np.cumsum(finite)])
    idx = np.arange(1, len(values) + 1)
    start = np.maximum(idx - window, 0)
    count = ccount[idx] - ccount[start]
    total = csum[idx] - csum[start]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def loss_curve(
    steps: ArrayLike | None,
    losses: ArrayLike,
    path: PathLike,
    smooth: int | None = None,
    logy: bool = True,
    title: str | None = None,
) -> Path:
    """Plot training ``losses`` against ``steps`` (None: 0, 1, ...): raw values faint, a moving average bold.

    ``smooth`` is the moving-average window (default ``len // 50``, at least
    1; 1 draws the raw curve alone). The y axis is logarithmic when ``logy``
    and every finite loss is positive, linear otherwise. Non-finite losses are
    left out of the average and show as gaps.
    """
    y = _as_tensor("losses", losses).to(torch.float64).numpy()
    if y.ndim != 1 or y.shape[0] < 1:
        raise ValueError(f"losses must be a non-empty 1-D sequence, got shape {tuple(y.shape)}")
    x = np.arange(len(y), dtype=np.float64) if steps is None else _as_tensor("steps", steps).to(torch.float64).numpy()
    if x.shape != y.shape:
        raise ValueError(f"steps and losses must have the same length, got shapes {tuple(x.shape)} and {tuple(y.shape)}")
    window = max(1, len(y) // 50) if smooth is None else int(smooth)
    if window < 1:
        raise ValueError(f"smooth must be >= 1 or None, got {smooth}")
    fig, (ax,) = _figure(1, title, width=6.0)
    if window > 1:
        ax.plot(x, y, color="C0", alpha=0.25, linewidth=0.8, label="loss")
        ax.plot(x, moving_average(y, window), color="C0", linewidth=2.0, label=f"moving average ({window})")
        ax.legend(fontsize=8)
    else:
        ax.plot(x, y, color="C0", linewidth=1.5)
    finite = y[np.isfinite(y)]
    if logy and finite.size and bool((finite > 0).all()):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    return _save_figure(fig, path)
